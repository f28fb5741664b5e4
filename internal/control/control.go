// Package control holds deskrun's use cases: enroll a machine, create a
// token, submit a job, and (in later issues) create a connection or start a
// run. The API and the web console are two faces over it, so each rule is
// written once, here.
package control

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/dispatch"
	"github.com/deskrun/deskrun/internal/notify"
	"github.com/deskrun/deskrun/internal/seal"
	"github.com/deskrun/deskrun/internal/store"
	"github.com/deskrun/deskrun/internal/wire"
)

// Service is the use-case layer.
type Service struct {
	Store store.Store
	Hub   *dispatch.Hub
	Log   *slog.Logger
	Now   func() time.Time
	// ServerURL and CAFingerprint go into enrollment tokens.
	ServerURL     string
	CAFingerprint string
	ServerVersion string
	// Conn is the connection policy; Notify sends webhooks (may be nil).
	Conn   ConnectionPolicy
	Notify *notify.Notifier
	// Runs is the run-queue policy.
	Runs RunPolicy
	// Flows tunes cloud flows; Secrets seals the secret store (nil: no
	// secret store).
	Flows   FlowPolicy
	Secrets *SecretBox

	connLocks keyedMutex
	sched     scheduler
	flows     flowEngine
}

func (s *Service) now() time.Time { return s.Now() }

func newSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashSecret(secret string) []byte {
	sum := sha256.Sum256([]byte(secret))
	return sum[:]
}

var unauthorized = &deskrun.Error{Code: deskrun.CodeUnauthorized, Message: "a valid API token is required",
	Resolution: "Pass --token or set DESKRUN_TOKEN; `deskrun dev` prints an admin token and writes it to the client config."}

// Authenticate checks a bearer API token and returns it.
func (s *Service) Authenticate(ctx context.Context, bearer string) (*deskrun.Token, error) {
	id, secret, ok := wire.ParseAPIToken(bearer)
	if !ok {
		return nil, unauthorized
	}
	t, err := s.Store.GetToken(ctx, id)
	if err != nil {
		if deskrun.IsCode(err, deskrun.CodeNotFound) {
			return nil, unauthorized
		}
		return nil, err
	}
	now := s.now()
	if t.Kind != deskrun.TokenAPI || subtle.ConstantTimeCompare(t.Hash, hashSecret(secret)) != 1 || !t.Active(now) {
		return nil, unauthorized
	}
	// `token list` shows when a token was last used. Recorded at most once
	// a minute per token, so a busy client does not add a write to each
	// request.
	if now.Sub(t.LastUsed) >= lastUsedEvery {
		if err := s.Store.TouchToken(ctx, t.ID, now); err != nil {
			s.Log.Warn("token_touch", "token_id", t.ID, "err", err)
		} else {
			t.LastUsed = now
		}
	}
	return t, nil
}

// lastUsedEvery is how stale a token's LastUsed may get.
const lastUsedEvery = time.Minute

// Authorize fails with Forbidden unless t's role includes want.
func Authorize(t *deskrun.Token, want deskrun.Role) error {
	if t == nil || !t.Role.Allows(want) {
		return &deskrun.Error{Code: deskrun.CodeForbidden, Message: fmt.Sprintf("this action needs the %s role", want)}
	}
	return nil
}

// CreateToken makes an API or enrollment token and returns it with the
// secret string, which is shown once and never stored.
func (s *Service) CreateToken(ctx context.Context, req wire.TokenCreate) (*deskrun.Token, string, error) {
	now := s.now()
	t := &deskrun.Token{Kind: deskrun.TokenKind(req.Kind), Name: req.Name, CreatedAt: now}
	switch t.Kind {
	case deskrun.TokenAPI:
		t.ID = deskrun.NewID("t", now)
		t.Role = deskrun.Role(req.Role)
		if t.Role == "" {
			t.Role = deskrun.RoleAdmin
		}
		if !t.Role.Valid() {
			return nil, "", &deskrun.Error{Code: deskrun.CodeInvalid, Field: "role", Message: fmt.Sprintf("unknown role %q: use admin, maker or viewer", req.Role)}
		}
	case deskrun.TokenEnrollment:
		t.ID = deskrun.NewID("e", now)
		t.UsesLeft = req.Uses
		if t.UsesLeft == 0 {
			t.UsesLeft = 1
		}
		if t.UsesLeft < 0 || t.UsesLeft > 10000 {
			return nil, "", &deskrun.Error{Code: deskrun.CodeInvalid, Field: "uses", Message: "uses must be between 1 and 10000"}
		}
		if req.TTL == "" {
			req.TTL = "1h"
		}
	default:
		return nil, "", &deskrun.Error{Code: deskrun.CodeInvalid, Field: "kind", Message: fmt.Sprintf("unknown token kind %q: use api or enrollment", req.Kind)}
	}
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 {
			return nil, "", &deskrun.Error{Code: deskrun.CodeInvalid, Field: "ttl", Message: fmt.Sprintf("ttl %q is not a positive duration such as 1h or 30m", req.TTL)}
		}
		t.ExpiresAt = now.Add(d)
	}
	secret := newSecret()
	t.Hash = hashSecret(secret)
	if err := s.Store.CreateToken(ctx, t); err != nil {
		return nil, "", err
	}
	if t.Kind == deskrun.TokenAPI {
		return t, wire.FormatAPIToken(t.ID, secret), nil
	}
	et := wire.EnrollmentToken{URL: s.ServerURL, CAFingerprint: s.CAFingerprint, ID: t.ID, Secret: secret}
	return t, et.Encode(), nil
}

// ListTokens lists tokens of one kind ("" for all).
func (s *Service) ListTokens(ctx context.Context, kind string) ([]*deskrun.Token, error) {
	return s.Store.ListTokens(ctx, deskrun.TokenKind(kind))
}

// RevokeToken revokes a token by id.
func (s *Service) RevokeToken(ctx context.Context, id string) error {
	return s.Store.RevokeToken(ctx, id, s.now())
}

var machineName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Enroll registers a new machine with an enrollment token. The token use
// and the machine are written in one transaction: a refused enrollment
// leaves the token's uses and the store unchanged.
func (s *Service) Enroll(ctx context.Context, req wire.EnrollRequest) (*deskrun.Machine, error) {
	invalid := &deskrun.Error{Code: deskrun.CodeEnrollmentTokenInvalid, Message: "the enrollment token is not valid for this server",
		Resolution: "Create a new one with `deskrun token create --enrollment` and copy it whole."}
	if !machineName.MatchString(req.Name) {
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "name", Message: fmt.Sprintf("machine name %q is not valid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", req.Name)}
	}
	if len(req.SigningKey) != ed25519.PublicKeySize {
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "signing_key", Message: "signing_key must be a 32-byte Ed25519 public key"}
	}
	if !seal.ValidPublicKey(req.SealKey) {
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "seal_key", Message: "seal_key must be an HPKE MLKEM768X25519 public key"}
	}
	now := s.now()
	t, err := s.Store.GetToken(ctx, req.TokenID)
	if err != nil {
		if deskrun.IsCode(err, deskrun.CodeNotFound) {
			return nil, invalid
		}
		return nil, err
	}
	if t.Kind != deskrun.TokenEnrollment || subtle.ConstantTimeCompare(t.Hash, hashSecret(req.Secret)) != 1 || !t.RevokedAt.IsZero() {
		return nil, invalid
	}
	m := &deskrun.Machine{
		ID: deskrun.NewID("m", now), Name: req.Name, OS: req.Info.OS, Arch: req.Info.Arch, Kernel: req.Info.Kernel,
		AgentVersion: req.Info.AgentVersion, ProtocolVersion: req.Info.ProtocolVersion,
		JoinState: deskrun.JoinState(req.Info.JoinState), Domain: req.Info.Domain, Slots: max(req.Info.Slots, 1),
		SigningKey: req.SigningKey, SealKey: req.SealKey, SealKeyID: seal.KeyID(req.SealKey),
		State: deskrun.MachineOffline, OfflineReason: "enrolled, not yet connected", CreatedAt: now,
	}
	err = s.Store.InTx(ctx, func(tx store.Tx) error {
		if err := tx.UseEnrollmentToken(ctx, t.ID, now); err != nil {
			return err
		}
		if _, err := tx.GetMachineByName(ctx, m.Name); err == nil {
			return &deskrun.Error{Code: deskrun.CodeMachineNameTaken, Field: "name",
				Message:    fmt.Sprintf("a machine named %q is already enrolled", m.Name),
				Resolution: fmt.Sprintf("Enroll with another --name, or remove the old one first: `deskrun machine delete %s`.", m.Name)}
		} else if !deskrun.IsCode(err, deskrun.CodeNotFound) {
			return err
		}
		return tx.CreateMachine(ctx, m)
	})
	if err != nil {
		return nil, err
	}
	s.Log.Info("machine enrolled", "machine", m.Name, "machine_id", m.ID, "token_id", t.ID)
	return m, nil
}

// Machine finds a machine by id or name.
func (s *Service) Machine(ctx context.Context, idOrName string) (*deskrun.Machine, error) {
	m, err := s.Store.GetMachine(ctx, idOrName)
	if deskrun.IsCode(err, deskrun.CodeNotFound) {
		m, err = s.Store.GetMachineByName(ctx, idOrName)
	}
	if deskrun.IsCode(err, deskrun.CodeNotFound) {
		return nil, &deskrun.Error{Code: deskrun.CodeNotFound, Message: fmt.Sprintf("no machine has the id or name %q", idOrName),
			Resolution: "List machines with `deskrun machine list`."}
	}
	return m, err
}

// Machines lists all machines.
func (s *Service) Machines(ctx context.Context) ([]*deskrun.Machine, error) {
	return s.Store.ListMachines(ctx)
}

// UpdateMachine changes a machine's policy.
func (s *Service) UpdateMachine(ctx context.Context, idOrName string, req wire.MachineUpdate) (*deskrun.Machine, error) {
	m, err := s.Machine(ctx, idOrName)
	if err != nil {
		return nil, err
	}
	if req.UnattendedSessions != "" {
		if req.UnattendedSessions != "shared" && req.UnattendedSessions != "exclusive" {
			return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "unattended_sessions", Message: fmt.Sprintf("unattended_sessions %q: use shared or exclusive", req.UnattendedSessions)}
		}
		if err := s.Store.SetMachineSessions(ctx, m.ID, req.UnattendedSessions); err != nil {
			return nil, err
		}
	}
	return s.Store.GetMachine(ctx, m.ID)
}

// DeleteMachine removes a machine; its agent can no longer connect.
func (s *Service) DeleteMachine(ctx context.Context, idOrName string) error {
	m, err := s.Machine(ctx, idOrName)
	if err != nil {
		return err
	}
	return s.Store.DeleteMachine(ctx, m.ID)
}

// MaxPayload bounds a job's payload.
const MaxPayload = 256 << 10

// CreateJob submits a job to a machine's agent.
func (s *Service) CreateJob(ctx context.Context, req wire.JobCreate) (*deskrun.Job, error) {
	m, err := s.Machine(ctx, req.Machine)
	if err != nil {
		return nil, err
	}
	switch req.Kind {
	case deskrun.JobNoop, deskrun.JobSleep:
	default:
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "kind", Message: fmt.Sprintf("unknown job kind %q: use noop or sleep", req.Kind)}
	}
	if len(req.Payload) > MaxPayload {
		return nil, &deskrun.Error{Code: deskrun.CodeBodyTooLarge, Field: "payload", Message: fmt.Sprintf("the payload is over %d bytes", MaxPayload)}
	}
	j := &deskrun.Job{MachineID: m.ID, Kind: req.Kind, Payload: req.Payload}
	if err := s.Hub.Submit(ctx, j); err != nil {
		return nil, err
	}
	return j, nil
}

// Job returns a job; with wait > 0 it waits that long for it to end.
func (s *Service) Job(ctx context.Context, id string, wait time.Duration) (*deskrun.Job, error) {
	if wait <= 0 {
		return s.Store.GetJob(ctx, id)
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return s.Hub.Wait(ctx, id)
}

// Jobs lists jobs.
func (s *Service) Jobs(ctx context.Context, f store.JobFilter) ([]*deskrun.Job, error) {
	return s.Store.ListJobs(ctx, f)
}

// CancelJob cancels a job.
func (s *Service) CancelJob(ctx context.Context, id string) error {
	return s.Hub.Cancel(ctx, id)
}
