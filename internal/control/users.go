package control

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/argon2"

	"github.com/deskrun/deskrun"
)

// SessionTTL is how long a console session lasts after sign-in.
const SessionTTL = 12 * time.Hour

// argon2id parameters: RFC 9106's second recommended option (64 MiB, three
// passes), with the parallelism of a small server.
const (
	argonTime    = 3
	argonMemory  = 64 << 10 // KiB
	argonThreads = 2
	argonKeyLen  = 32
)

// HashPassword returns the argon2id PHC string of a password.
func HashPassword(password []byte) string {
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	key := argon2.IDKey(password, salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		enc.EncodeToString(salt), enc.EncodeToString(key))
}

// checkPassword reports whether password matches a PHC string made by
// HashPassword (with whatever parameters it records).
func checkPassword(phc string, password []byte) bool {
	parts := strings.Split(phc, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false
	}
	var v int
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return false
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m == 0 || m > 1<<22 || t == 0 || t > 100 || p == 0 {
		return false
	}
	enc := base64.RawStdEncoding
	salt, err1 := enc.DecodeString(parts[4])
	want, err2 := enc.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 {
		return false
	}
	got := argon2.IDKey(password, salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}

// dummyHash is checked when a user does not exist, so a sign-in takes as
// long for a missing user as for a wrong password.
// It is computed on first use, not at package init: an argon2id hash
// costs ~0.3 s, and every deskrun process (each run re-executes the
// binary to drop to its user) would pay it at start.
var dummyHash = sync.OnceValue(func() string { return HashPassword([]byte("deskrun: no such user")) })

// Authorize fails with Forbidden unless the actor's role includes want:
// the console's check, the same rule as the API's Authorize.
func (a Actor) Authorize(want deskrun.Role) error {
	return Authorize(&deskrun.Token{Role: a.Role}, want)
}

// CreateUser adds a console user.
func (s *Service) CreateUser(ctx context.Context, name string, role deskrun.Role, password []byte) (*deskrun.User, error) {
	defer clear(password)
	if !machineName.MatchString(name) {
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "name", Message: fmt.Sprintf("user name %q is not valid: use 1-63 letters, digits, '.', '_' or '-'", name)}
	}
	if !role.Valid() {
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "role", Message: fmt.Sprintf("unknown role %q: use admin, maker or viewer", role)}
	}
	if len(password) < 8 {
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "password", Message: "a console password has at least 8 characters"}
	}
	u := &deskrun.User{Name: name, PasswordHash: HashPassword(password), Role: role, CreatedAt: s.now()}
	if err := s.Store.CreateUser(ctx, u); err != nil {
		return nil, err
	}
	s.audit(ctx, deskrun.AuditEvent{Actor: "server", Action: deskrun.AuditUserCreate, Result: "ok", Detail: "user " + name + " (" + string(role) + ")"})
	return u, nil
}

var signInRefused = &deskrun.Error{Code: deskrun.CodeUnauthorized, Message: "the user name or password is wrong",
	Resolution: "An admin creates console users with `deskrun user create NAME --role viewer --password-stdin`."}

// SignIn checks a console user's password and opens a session. It returns
// the session and the secret for its cookie (shown once, never stored).
func (s *Service) SignIn(ctx context.Context, name string, password []byte) (*deskrun.Session, string, error) {
	defer clear(password)
	u, err := s.Store.GetUser(ctx, name)
	if err != nil && !deskrun.IsCode(err, deskrun.CodeNotFound) {
		return nil, "", err
	}
	hash := dummyHash()
	if u != nil {
		hash = u.PasswordHash
	}
	if !checkPassword(hash, password) || u == nil {
		s.audit(ctx, deskrun.AuditEvent{Actor: "user:" + name, Action: deskrun.AuditSignIn, Result: "failed", Reason: "password"})
		return nil, "", signInRefused
	}
	return s.openSession(ctx, "user:"+u.Name, u.Role)
}

// SignInToken opens a console session with an API token.
func (s *Service) SignInToken(ctx context.Context, token string) (*deskrun.Session, string, error) {
	t, err := s.Authenticate(ctx, strings.TrimSpace(token))
	if err != nil {
		s.audit(ctx, deskrun.AuditEvent{Actor: "console", Action: deskrun.AuditSignIn, Result: "failed", Reason: "token"})
		return nil, "", err
	}
	return s.openSession(ctx, "token:"+t.ID, t.Role)
}

func (s *Service) openSession(ctx context.Context, actor string, role deskrun.Role) (*deskrun.Session, string, error) {
	now := s.now()
	secret := newSecret()
	se := &deskrun.Session{IDHash: hashSecret(secret), Actor: actor, Role: role, CSRF: newSecret(), CreatedAt: now, ExpiresAt: now.Add(SessionTTL)}
	if _, err := s.Store.DeleteExpiredSessions(ctx, now); err != nil {
		s.Log.Error("delete expired sessions", "err", err)
	}
	if err := s.Store.CreateSession(ctx, se); err != nil {
		return nil, "", err
	}
	s.audit(ctx, deskrun.AuditEvent{Actor: actor, Action: deskrun.AuditSignIn, Result: "ok", Reason: string(role)})
	return se, secret, nil
}

// Session returns the live session a cookie secret opens, with the actor's
// current role: a user's role is re-read, and a token's revocation or
// expiry ends its sessions at once.
func (s *Service) Session(ctx context.Context, secret string) (*deskrun.Session, Actor, error) {
	fail := &deskrun.Error{Code: deskrun.CodeUnauthorized, Message: "sign in to the console"}
	if secret == "" {
		return nil, Actor{}, fail
	}
	se, err := s.Store.GetSession(ctx, hashSecret(secret))
	if deskrun.IsCode(err, deskrun.CodeNotFound) {
		return nil, Actor{}, fail
	} else if err != nil {
		return nil, Actor{}, err
	}
	if !s.now().Before(se.ExpiresAt) {
		return nil, Actor{}, fail
	}
	a := Actor{ID: se.Actor}
	switch kind, id, _ := strings.Cut(se.Actor, ":"); kind {
	case "user":
		u, err := s.Store.GetUser(ctx, id)
		if err != nil {
			return nil, Actor{}, fail
		}
		a.Role = u.Role
	case "token":
		t, err := s.Store.GetToken(ctx, id)
		if err != nil || t.Kind != deskrun.TokenAPI || !t.Active(s.now()) {
			return nil, Actor{}, fail
		}
		a.Role = t.Role
	default:
		return nil, Actor{}, fail
	}
	return se, a, nil
}

// SignOut ends a session.
func (s *Service) SignOut(ctx context.Context, secret string) error {
	se, _, err := s.Session(ctx, secret)
	if err != nil {
		return nil
	}
	s.audit(ctx, deskrun.AuditEvent{Actor: se.Actor, Action: deskrun.AuditSignOut, Result: "ok"})
	return s.Store.DeleteSession(ctx, se.IDHash)
}
