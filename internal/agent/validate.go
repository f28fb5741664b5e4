package agent

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"sync"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/seal"
	"github.com/deskrun/deskrun/internal/wire"
)

// credentialGuard is the agent's own lockout breaker, under the server's:
// once a sealed credential has failed definitively on this machine, the
// agent refuses to try it again, whatever the server sends; and logons
// with one credential run one at a time, so a burst of jobs cannot make
// several failed attempts before the first result is known.
type credentialGuard struct {
	mu     sync.Mutex
	locks  map[[32]byte]*sync.Mutex
	failed map[[32]byte]*deskrun.Error
}

func (g *credentialGuard) key(p *wire.ValidatePayload) [32]byte {
	h := sha256.New()
	h.Write([]byte(p.ConnectionID))
	h.Write([]byte{0})
	h.Write(p.Ciphertext)
	var k [32]byte
	copy(k[:], h.Sum(nil))
	return k
}

func (g *credentialGuard) lock(k [32]byte) (unlock func(), failed *deskrun.Error) {
	g.mu.Lock()
	if g.locks == nil {
		g.locks, g.failed = map[[32]byte]*sync.Mutex{}, map[[32]byte]*deskrun.Error{}
	}
	l := g.locks[k]
	if l == nil {
		l = &sync.Mutex{}
		g.locks[k] = l
	}
	g.mu.Unlock()
	l.Lock()
	g.mu.Lock()
	failed = g.failed[k]
	g.mu.Unlock()
	return l.Unlock, failed
}

func (g *credentialGuard) fail(k [32]byte, e *deskrun.Error) {
	g.mu.Lock()
	g.failed[k] = e
	g.mu.Unlock()
}

// validate is the executor of "validate" jobs: open the sealed credential,
// log the user on through the same provider as `deskrun diagnose logon`,
// and report whom it resolved to, or why it failed.
func (a *Agent) validate(ctx context.Context, raw json.RawMessage, _ func(string)) (json.RawMessage, error) {
	var p wire.ValidatePayload
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Message: "malformed validate payload"}
	}
	out, err := a.logon(ctx, &p)
	if err != nil {
		return nil, a.downgrade(err)
	}
	return json.Marshal(out)
}

func (a *Agent) logon(ctx context.Context, p *wire.ValidatePayload) (*wire.ValidateOutput, error) {
	res, _, err := a.openCredential(ctx, p, false)
	if err != nil {
		return nil, err
	}
	out := &wire.ValidateOutput{Identity: wireIdentity(res.Identity), Warnings: wireWarnings(res.Warnings)}
	return out, nil
}

// openCredential opens a sealed credential and logs its user on, under the
// guard: validate jobs and desktop runs share this one path. With session
// set and a provider that is an identity.SessionOpener, it also opens the
// logon session (PAM open_session) and returns it; the caller closes it.
// The password is zeroed before it returns.
func (a *Agent) openCredential(ctx context.Context, p *wire.ValidatePayload, session bool) (*identity.Result, identity.Session, error) {
	if a.Logon == nil {
		return nil, nil, identity.Fail(identity.ReasonProviderUnavailable, nil)
	}
	lt, err := identity.ParseLogonType(p.LogonType)
	if err != nil {
		return nil, nil, err
	}
	name, err := identity.ParseNameOn(p.Username, deskrun.JoinState(a.Info.JoinState), a.Info.Domain)
	if err != nil {
		return nil, nil, err
	}
	k := a.guard.key(p)
	unlock, failed := a.guard.lock(k)
	defer unlock()
	if failed != nil && !p.Force {
		e := *failed
		e.Code, e.Reason = deskrun.CodeConnectionBroken, failed.Reason
		e.Message = "this machine's agent already saw this credential fail (" + failed.Reason + ") and will not try it again: " + failed.Message
		return nil, nil, &e
	}
	if p.KeyID != seal.KeyID(a.sealPublic) {
		return nil, nil, sealInvalid("the credential was sealed to key " + p.KeyID + ", not to this machine's key " + seal.KeyID(a.sealPublic))
	}
	pw, err := seal.Open(a.id.SealKey, deskrun.SealInfo(p.ConnectionID, p.MachineID), p.Ciphertext)
	if err != nil || p.MachineID != a.id.MachineID {
		return nil, nil, sealInvalid("the credential does not open with this machine's key and this connection's binding")
	}
	defer seal.Zero(pw)
	if err := identity.CheckPassword(pw); err != nil {
		return nil, nil, err
	}
	req := identity.Request{Name: name, Password: pw, Type: lt}
	var res *identity.Result
	var sess identity.Session
	if so, ok := a.Logon.(identity.SessionOpener); ok && session {
		if sess, err = so.OpenSession(ctx, req); err == nil {
			res = sess.Result()
		}
	} else {
		res, err = a.Logon.Logon(ctx, req)
	}
	if err != nil {
		var de *deskrun.Error
		if errors.As(err, &de) && de.Definitive {
			a.guard.fail(k, de)
		}
		return nil, nil, err
	}
	a.guard.fail(k, nil) // a success clears an earlier failure (forced re-test)
	return res, sess, nil
}

func wireIdentity(id identity.Identity) wire.ValidateIdentity {
	return wire.ValidateIdentity{Username: id.Username, UID: id.UID, GID: id.GID, Groups: id.Groups, Home: id.Home, Shell: id.Shell}
}

func wireWarnings(ws []identity.Warning) []wire.ValidateWarning {
	var out []wire.ValidateWarning
	for _, w := range ws {
		out = append(out, wire.ValidateWarning{Reason: w.Reason, Days: w.Days, Message: w.Message})
	}
	return out
}

func sealInvalid(detail string) error {
	e := identity.Fail(deskrun.CodeSealedCredentialInvalid, nil)
	e.Provider = &deskrun.ProviderResult{Name: "seal", Detail: detail}
	return e
}

// downgrade makes an agent that speaks an old protocol report identity
// failures as old agents did: the generic code only, no reason. It exists
// so the server's handling of old agents can be tested with a real agent.
func (a *Agent) downgrade(err error) error {
	if a.protocol() >= wire.ReasonsProtocolVersion {
		return err
	}
	var de *deskrun.Error
	if errors.As(err, &de) && de.Code == deskrun.CodeWindowsIdentityIncorrect {
		return &deskrun.Error{Code: deskrun.CodeWindowsIdentityIncorrect, Message: "The credentials provided with the request are invalid."}
	}
	return err
}

func (a *Agent) protocol() int {
	if a.ProtocolVersion != 0 {
		return a.ProtocolVersion
	}
	return wire.ProtocolVersion
}
