package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/notify"
	"github.com/deskrun/deskrun/internal/seal"
	"github.com/deskrun/deskrun/internal/store"
	"github.com/deskrun/deskrun/internal/wire"
)

// ConnectionPolicy tunes how connections are tested and watched.
type ConnectionPolicy struct {
	// TestTimeout bounds a test logon on the machine.
	TestTimeout time.Duration
	// ExpiryWarnDays: a password that expires within this many days makes
	// the connection "expiring" and sends a notification.
	ExpiryWarnDays int
	// TransientRetries is how many times a retryable failure
	// (NoLogonServers, …) is retried, with capped exponential backoff,
	// before it is reported. Definitive failures are never retried.
	TransientRetries int
	TransientBackoff time.Duration
	MaxBackoff       time.Duration
	// RetestInterval re-tests healthy, expiring and untested connections
	// whose last test is older than this (0: never). RetestBroken also
	// re-tests broken ones (off by default: that is one more failed logon).
	RetestInterval time.Duration
	RetestBroken   bool
}

// DefaultConnectionPolicy returns the defaults.
func DefaultConnectionPolicy() ConnectionPolicy {
	return ConnectionPolicy{TestTimeout: 60 * time.Second, ExpiryWarnDays: 14, TransientRetries: 3,
		TransientBackoff: 500 * time.Millisecond, MaxBackoff: 10 * time.Second, RetestInterval: 24 * time.Hour}
}

// Actor is who asks: a token (or, later, a console user).
type Actor struct {
	ID   string
	Role deskrun.Role
}

func (a Actor) String() string { return a.ID }

// keyedMutex serialises work per key (per connection): two tests of one
// connection never race to the machine, so the second sees the first's
// verdict (broken) instead of making a second failed logon.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	mu   sync.Mutex
	refs int
}

func (k *keyedMutex) lock(key string) func() {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedEntry{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}

var connectionIDPattern = regexp.MustCompile(`^c_[0-9a-z]{26}$`)

func (s *Service) audit(ctx context.Context, e deskrun.AuditEvent) {
	e.At = s.now()
	e.ID = deskrun.NewID("a", e.At)
	if err := s.Store.AppendAudit(ctx, &e); err != nil {
		s.Log.Error("audit", "action", e.Action, "err", err)
	}
}

// CreateConnection validates, seals and tests a new connection on its
// target machine, and saves it only if the test logon succeeds (or
// SkipTest is set). The password, when the API receives it, is sealed at
// once and zeroed.
func (s *Service) CreateConnection(ctx context.Context, actor Actor, req wire.ConnectionCreate) (*deskrun.Connection, *wire.ValidateOutput, error) {
	defer clear(req.Password)
	if !machineName.MatchString(req.Name) {
		return nil, nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "name", Message: fmt.Sprintf("connection name %q is not valid: use 1-63 letters, digits, '.', '_' or '-'", req.Name)}
	}
	runMode, err := parseRunMode(req.RunMode)
	if err != nil {
		return nil, nil, err
	}
	lt, err := parseLogonType(req.LogonType)
	if err != nil {
		return nil, nil, err
	}
	m, err := s.Machine(ctx, req.Machine)
	if err != nil {
		return nil, nil, err
	}
	if _, err := identity.ParseNameOn(req.Username, m.JoinState, m.Domain); err != nil {
		return nil, nil, withMachine(err, m.Name)
	}
	if _, err := s.Store.GetConnectionByName(ctx, req.Name); err == nil {
		return nil, nil, &deskrun.Error{Code: deskrun.CodeConflict, Field: "name", Message: fmt.Sprintf("a connection named %q already exists", req.Name)}
	} else if !deskrun.IsCode(err, deskrun.CodeNotFound) {
		return nil, nil, err
	}
	now := s.now()
	id := req.ID
	if id == "" {
		id = deskrun.NewID("c", now)
	} else if !connectionIDPattern.MatchString(id) {
		return nil, nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "id", Message: "id must be a deskrun connection id (c_ and 26 base32 characters)"}
	}
	cred, err := s.credential(ctx, actor, id, req.Name, m, req.Password, req.Sealed)
	if err != nil {
		return nil, nil, err
	}
	c := &deskrun.Connection{
		ID: id, Name: req.Name, Target: m.ID, Username: req.Username, RunMode: runMode, LogonType: string(lt),
		Owner: actor.ID, State: deskrun.ConnectionUntested, StateChangedAt: now,
		Credentials: []deskrun.SealedCredential{cred}, CreatedAt: now, UpdatedAt: now,
	}
	var out *wire.ValidateOutput
	if !req.SkipTest {
		out, err = s.testLogon(ctx, actor, c, m, cred, false)
		if err != nil {
			return nil, nil, err
		}
		s.applySuccess(c, out)
	}
	if err := s.Store.CreateConnection(ctx, c); err != nil {
		return nil, nil, err
	}
	s.audit(ctx, deskrun.AuditEvent{Actor: actor.ID, Action: deskrun.AuditConnectionCreate, ConnectionID: c.ID, ConnectionName: c.Name,
		MachineID: m.ID, Result: "ok", Reason: string(c.State)})
	s.notifyState(c, m, deskrun.ConnectionUntested)
	return c, out, nil
}

// credential seals a plain password (API) or checks a client-sealed one.
func (s *Service) credential(ctx context.Context, actor Actor, connID, connName string, m *deskrun.Machine, password []byte, sealed *wire.Sealed) (deskrun.SealedCredential, error) {
	switch {
	case password != nil && sealed != nil:
		return deskrun.SealedCredential{}, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "password", Message: "give either password or sealed, not both"}
	case sealed != nil:
		if sealed.MachineID != m.ID || sealed.KeyID != m.SealKeyID {
			e := identity.Fail(deskrun.CodeSealedCredentialInvalid, nil)
			e.Message = fmt.Sprintf("the credential was sealed to machine %s key %s, but machine %s's key is %s", sealed.MachineID, sealed.KeyID, m.Name, m.SealKeyID)
			return deskrun.SealedCredential{}, e
		}
		if len(sealed.Ciphertext) == 0 || len(sealed.Ciphertext) > 16<<10 {
			return deskrun.SealedCredential{}, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "sealed", Message: "the sealed credential is empty or too large"}
		}
		return deskrun.SealedCredential{MachineID: m.ID, KeyID: m.SealKeyID, Ciphertext: sealed.Ciphertext}, nil
	case password != nil:
		if err := identity.CheckPassword(password); err != nil {
			return deskrun.SealedCredential{}, withMachine(err, m.Name)
		}
		ct, err := seal.Seal(m.SealKey, deskrun.SealInfo(connID, m.ID), password)
		if err != nil {
			return deskrun.SealedCredential{}, fmt.Errorf("seal credential: %w", err)
		}
		s.audit(ctx, deskrun.AuditEvent{Actor: "server", Action: deskrun.AuditCredentialSeal, ConnectionID: connID, ConnectionName: connName,
			MachineID: m.ID, Result: "ok", Detail: "sealed by the server for " + actor.ID + " to key " + m.SealKeyID})
		return deskrun.SealedCredential{MachineID: m.ID, KeyID: m.SealKeyID, Ciphertext: ct}, nil
	}
	e := identity.Fail(identity.ReasonEmptyPassword, nil)
	e.Field = "password"
	return deskrun.SealedCredential{}, e
}

// testLogon pushes a validate job to the machine and waits for its verdict.
func (s *Service) testLogon(ctx context.Context, actor Actor, c *deskrun.Connection, m *deskrun.Machine, cred deskrun.SealedCredential, force bool) (*wire.ValidateOutput, error) {
	if !s.Hub.Online(m.ID) {
		return nil, &deskrun.Error{Code: deskrun.CodeMachineOffline, Machine: m.Name, Retryable: true,
			Message:    fmt.Sprintf("machine %s is offline, so the credentials cannot be tested on it", m.Name),
			Resolution: "Start its agent (`deskrun agent run`), or save the connection untested with --skip-test; it will be tested on its first use."}
	}
	payload, _ := json.Marshal(wire.ValidatePayload{ConnectionID: c.ID, ConnectionName: c.Name, MachineID: m.ID,
		Username: c.Username, LogonType: c.LogonType, KeyID: cred.KeyID, Ciphertext: cred.Ciphertext, Force: force})
	j := &deskrun.Job{MachineID: m.ID, Kind: deskrun.JobValidate, Payload: payload}
	if err := s.Hub.Submit(ctx, j); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, s.Conn.TestTimeout)
	done, err := s.Hub.Wait(wctx, j.ID)
	cancel()
	if err != nil {
		return nil, err
	}
	if !done.State.Terminal() {
		_ = s.Hub.Cancel(context.WithoutCancel(ctx), j.ID)
		e := identity.Fail(deskrun.CodeConnectionTestTimeout, nil)
		e.Machine = m.Name
		return nil, e
	}
	s.audit(ctx, deskrun.AuditEvent{Actor: "agent:" + m.Name, Action: deskrun.AuditCredentialUnseal, ConnectionID: c.ID, ConnectionName: c.Name,
		MachineID: m.ID, Result: resultWord(done.Error == nil || done.Error.Code != deskrun.CodeSealedCredentialInvalid), Detail: "job " + j.ID + " for " + actor.ID})
	if done.State != deskrun.JobSucceeded {
		e := done.Error
		if e == nil {
			e = &deskrun.Error{Code: deskrun.CodeInternal, Message: "the test logon failed without an error"}
		}
		e = s.gateProtocol(e, m, c.Username)
		e.Machine = m.Name
		s.audit(ctx, deskrun.AuditEvent{Actor: "agent:" + m.Name, Action: deskrun.AuditLogonAttempt, ConnectionID: c.ID, ConnectionName: c.Name,
			MachineID: m.ID, Result: "failed", Reason: reasonOf(e), Detail: c.LogonType + " logon as " + c.Username})
		return nil, e
	}
	var out wire.ValidateOutput
	if err := json.Unmarshal(done.Result, &out); err != nil {
		return nil, fmt.Errorf("validate result: %w", err)
	}
	s.audit(ctx, deskrun.AuditEvent{Actor: "agent:" + m.Name, Action: deskrun.AuditLogonAttempt, ConnectionID: c.ID, ConnectionName: c.Name,
		MachineID: m.ID, Result: "ok", Detail: fmt.Sprintf("%s logon as %s (uid %d)", c.LogonType, out.Identity.Username, out.Identity.UID)})
	return &out, nil
}

// gateProtocol explains a bare WindowsIdentityIncorrect from an agent too
// old to report the reason (the seed's "install version 2.24 or higher").
func (s *Service) gateProtocol(e *deskrun.Error, m *deskrun.Machine, user string) *deskrun.Error {
	if e.Code != deskrun.CodeWindowsIdentityIncorrect || e.Reason != "" || m.ProtocolVersion >= wire.ReasonsProtocolVersion {
		return e
	}
	out := *e
	out.Message = fmt.Sprintf("The credentials were refused on machine %s, whose agent (protocol %d) reports only this generic code.", m.Name, m.ProtocolVersion)
	out.Resolution = fmt.Sprintf("Update the agent on %s to deskrun %s or later (protocol %d) to see the specific reason. Meanwhile run `sudo deskrun diagnose logon %s` on the machine.",
		m.Name, s.ServerVersion, wire.ReasonsProtocolVersion, user)
	return &out
}

func reasonOf(e *deskrun.Error) string {
	if e.Reason != "" {
		return e.Reason
	}
	return e.Code
}

func resultWord(ok bool) string {
	if ok {
		return "ok"
	}
	return "failed"
}

func withMachine(err error, machine string) error {
	var de *deskrun.Error
	if errors.As(err, &de) {
		out := *de
		out.Machine = machine
		return &out
	}
	return err
}

// applySuccess sets a connection's health after a successful logon.
func (s *Service) applySuccess(c *deskrun.Connection, out *wire.ValidateOutput) {
	now := s.now()
	prev := c.State
	c.State, c.Reason, c.LastError, c.LastTestedAt = deskrun.ConnectionHealthy, "", nil, now
	c.ExpiresInDays, c.ExpiryCheckedAt = 0, now
	for _, w := range out.Warnings {
		if w.Reason == identity.ReasonPasswordExpiresSoon {
			c.ExpiresInDays = max(w.Days, 0)
			if w.Days <= s.Conn.ExpiryWarnDays {
				c.State, c.Reason = deskrun.ConnectionExpiring, w.Reason
			}
		}
	}
	if c.State != prev {
		c.StateChangedAt = now
	}
}

// applyFailure sets a connection's health after a failed logon and says
// whether it is now broken.
func (s *Service) applyFailure(c *deskrun.Connection, e *deskrun.Error) {
	now := s.now()
	c.LastError, c.LastTestedAt, c.Reason = e, now, reasonOf(e)
	if breaks(e) && c.State != deskrun.ConnectionBroken {
		c.State, c.StateChangedAt = deskrun.ConnectionBroken, now
	}
}

// breaks reports whether a failure must stop all use of the credential: a
// definitive identity reason, or an identity failure whose reason is
// unknown (an old agent), since retrying an unknown failure is how
// accounts get locked.
func breaks(e *deskrun.Error) bool {
	if e.Definitive {
		return true
	}
	return e.Code == deskrun.CodeWindowsIdentityIncorrect && e.Reason == ""
}

func (s *Service) notifyState(c *deskrun.Connection, m *deskrun.Machine, prev deskrun.ConnectionState) {
	if c.State == prev || s.Notify == nil {
		return
	}
	ev := notify.Event{At: s.now(), Connection: c.Name, Machine: m.Name, Username: c.Username, Reason: c.Reason}
	switch c.State {
	case deskrun.ConnectionBroken:
		ev.Type = "connection.broken"
		if c.LastError != nil {
			ev.Status, ev.Message, ev.Resolution = c.LastError.Status, c.LastError.Message, c.LastError.Resolution
		}
	case deskrun.ConnectionExpiring:
		ev.Type, ev.DaysLeft = "connection.expiring", c.ExpiresInDays
		ev.Message = fmt.Sprintf("The password of %s expires in %d days.", c.Username, c.ExpiresInDays)
	default:
		return
	}
	s.Notify.Send(ev)
}

// TestConnection tests a saved connection on its machine (a run-time use of
// the credential) and records the outcome. A broken connection is refused
// at once, without touching the machine, unless an admin forces the test.
func (s *Service) TestConnection(ctx context.Context, actor Actor, name string, force bool) (*deskrun.Connection, *wire.ValidateOutput, error) {
	c, err := s.Connection(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	if force && !actor.Role.Allows(deskrun.RoleAdmin) {
		return nil, nil, &deskrun.Error{Code: deskrun.CodeForbidden, Message: "forcing a test of a broken connection needs the admin role: it makes a logon attempt with credentials that failed definitively"}
	}
	unlock := s.connLocks.lock(c.ID)
	defer unlock()
	if c, err = s.Store.GetConnection(ctx, c.ID); err != nil { // re-read under the lock
		return nil, nil, err
	}
	m, err := s.Store.GetMachine(ctx, c.Target)
	if err != nil {
		return nil, nil, err
	}
	if c.State == deskrun.ConnectionBroken && !force {
		e := s.brokenError(c, m)
		s.audit(ctx, deskrun.AuditEvent{Actor: actor.ID, Action: deskrun.AuditLogonRefused, ConnectionID: c.ID, ConnectionName: c.Name,
			MachineID: m.ID, Result: "refused", Reason: c.Reason, Detail: "the connection is broken; no attempt was made"})
		return c, nil, e
	}
	cred, ok := c.CredentialFor(m.ID)
	if !ok {
		e := identity.Fail(deskrun.CodeSealedCredentialInvalid, nil)
		e.Message, e.Machine = "the connection has no credential sealed for machine "+m.Name, m.Name
		return c, nil, e
	}
	prev := c.State
	backoff := s.Conn.TransientBackoff
	var out *wire.ValidateOutput
	for attempt := 0; ; attempt++ {
		out, err = s.testLogon(ctx, actor, c, m, cred, force)
		var de *deskrun.Error
		if err == nil || !errors.As(err, &de) || !de.Retryable || breaks(de) || attempt >= s.Conn.TransientRetries ||
			de.Code == deskrun.CodeMachineOffline {
			break
		}
		s.Log.Info("transient logon failure; retrying", "connection", c.Name, "reason", reasonOf(de), "in", backoff)
		select {
		case <-ctx.Done():
			return c, nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, s.Conn.MaxBackoff)
	}
	var de *deskrun.Error
	switch {
	case err == nil:
		s.applySuccess(c, out)
	case errors.As(err, &de) && (de.Code == deskrun.CodeWindowsIdentityIncorrect || de.Code == deskrun.CodeSealedCredentialInvalid):
		s.applyFailure(c, de)
	default:
		return c, nil, err // the machine was not reached: the connection's health is unknown, not changed
	}
	if serr := s.Store.SetConnectionHealth(ctx, c); serr != nil {
		return c, nil, serr
	}
	if c.State == deskrun.ConnectionBroken && prev != deskrun.ConnectionBroken {
		s.audit(ctx, deskrun.AuditEvent{Actor: "server", Action: deskrun.AuditConnectionBroken, ConnectionID: c.ID, ConnectionName: c.Name,
			MachineID: m.ID, Result: "broken", Reason: c.Reason, Detail: "no further logon will be attempted with these credentials until they are updated or an admin re-tests them"})
	}
	s.notifyState(c, m, prev)
	return c, out, err
}

// brokenError is the error every use of a broken connection gets at once.
func (s *Service) brokenError(c *deskrun.Connection, m *deskrun.Machine) *deskrun.Error {
	e := identity.Fail(deskrun.CodeConnectionBroken, nil)
	e.Reason = c.Reason
	if c.LastError != nil {
		e.Status, e.StatusDecimal, e.Provider = c.LastError.Status, c.LastError.StatusDecimal, c.LastError.Provider
	}
	e.Machine = m.Name
	e.Message = fmt.Sprintf("connection %s is broken since %s (%s): deskrun makes no logon attempt with its credentials until they are updated",
		c.Name, c.StateChangedAt.UTC().Format(time.RFC3339), c.Reason)
	return e
}

// UpdateConnection changes a connection. A new username or password is
// tested on the machine first and saved only if the logon succeeds; the old
// credentials stay otherwise.
func (s *Service) UpdateConnection(ctx context.Context, actor Actor, name string, req wire.ConnectionUpdate) (*deskrun.Connection, *wire.ValidateOutput, error) {
	defer clear(req.Password)
	c, err := s.Connection(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	unlock := s.connLocks.lock(c.ID)
	defer unlock()
	if c, err = s.Store.GetConnection(ctx, c.ID); err != nil {
		return nil, nil, err
	}
	m, err := s.Store.GetMachine(ctx, c.Target)
	if err != nil {
		return nil, nil, err
	}
	retest := false
	if req.RunMode != "" {
		if c.RunMode, err = parseRunMode(req.RunMode); err != nil {
			return nil, nil, err
		}
	}
	if req.LogonType != "" {
		lt, err := parseLogonType(req.LogonType)
		if err != nil {
			return nil, nil, err
		}
		retest = retest || string(lt) != c.LogonType
		c.LogonType = string(lt)
	}
	if req.Username != "" && req.Username != c.Username {
		if _, err := identity.ParseNameOn(req.Username, m.JoinState, m.Domain); err != nil {
			return nil, nil, withMachine(err, m.Name)
		}
		c.Username, retest = req.Username, true
	}
	if req.Password != nil || req.Sealed != nil {
		cred, err := s.credential(ctx, actor, c.ID, c.Name, m, req.Password, req.Sealed)
		if err != nil {
			return nil, nil, err
		}
		c.Credentials, retest = []deskrun.SealedCredential{cred}, true
	}
	prev := c.State
	var out *wire.ValidateOutput
	if retest && !req.SkipTest {
		cred, _ := c.CredentialFor(m.ID)
		out, err = s.testLogon(ctx, actor, c, m, cred, false)
		if err != nil {
			return nil, nil, err // nothing saved: the old credentials stay
		}
		s.applySuccess(c, out)
	} else if retest {
		c.State, c.Reason, c.LastError, c.StateChangedAt = deskrun.ConnectionUntested, "", nil, s.now()
	}
	c.UpdatedAt = s.now()
	if err := s.Store.UpdateConnection(ctx, c); err != nil {
		return nil, nil, err
	}
	s.audit(ctx, deskrun.AuditEvent{Actor: actor.ID, Action: deskrun.AuditConnectionUpdate, ConnectionID: c.ID, ConnectionName: c.Name,
		MachineID: m.ID, Result: "ok", Reason: string(c.State)})
	s.notifyState(c, m, prev)
	return c, out, nil
}

// Connection finds a connection by name or id.
func (s *Service) Connection(ctx context.Context, nameOrID string) (*deskrun.Connection, error) {
	c, err := s.Store.GetConnectionByName(ctx, nameOrID)
	if deskrun.IsCode(err, deskrun.CodeNotFound) {
		c, err = s.Store.GetConnection(ctx, nameOrID)
	}
	if deskrun.IsCode(err, deskrun.CodeNotFound) {
		return nil, &deskrun.Error{Code: deskrun.CodeNotFound, Message: fmt.Sprintf("no connection has the name or id %q", nameOrID),
			Resolution: "List connections with `deskrun connection list`."}
	}
	return c, err
}

// Connections lists connections.
func (s *Service) Connections(ctx context.Context) ([]*deskrun.Connection, error) {
	return s.Store.ListConnections(ctx)
}

// DeleteConnection removes a connection and its sealed credentials.
func (s *Service) DeleteConnection(ctx context.Context, actor Actor, name string) error {
	c, err := s.Connection(ctx, name)
	if err != nil {
		return err
	}
	if err := s.Store.DeleteConnection(ctx, c.ID); err != nil {
		return err
	}
	s.audit(ctx, deskrun.AuditEvent{Actor: actor.ID, Action: deskrun.AuditConnectionDelete, ConnectionID: c.ID, ConnectionName: c.Name,
		MachineID: c.Target, Result: "ok"})
	return nil
}

// Audit lists audit events.
func (s *Service) Audit(ctx context.Context, f store.AuditFilter) ([]*deskrun.AuditEvent, error) {
	return s.Store.ListAudit(ctx, f)
}

// RetestDue re-tests the connections whose last test is older than the
// policy's interval (not broken ones unless RetestBroken). It returns how
// many it tested.
func (s *Service) RetestDue(ctx context.Context) (int, error) {
	if s.Conn.RetestInterval <= 0 {
		return 0, nil
	}
	cs, err := s.Store.ListConnections(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, c := range cs {
		if c.State == deskrun.ConnectionBroken && !s.Conn.RetestBroken {
			continue
		}
		if s.now().Sub(c.LastTestedAt) < s.Conn.RetestInterval {
			continue
		}
		if !s.Hub.Online(c.Target) {
			continue
		}
		n++
		if _, _, err := s.TestConnection(ctx, Actor{ID: "server:retest", Role: deskrun.RoleAdmin}, c.ID, c.State == deskrun.ConnectionBroken); err != nil {
			s.Log.Info("periodic re-test failed", "connection", c.Name, "code", deskrun.ErrorCode(err))
		}
	}
	return n, nil
}

func parseRunMode(s string) (deskrun.RunMode, error) {
	switch deskrun.RunMode(s) {
	case "", deskrun.RunUnattended:
		return deskrun.RunUnattended, nil
	case deskrun.RunAttended:
		return deskrun.RunAttended, nil
	}
	return "", &deskrun.Error{Code: deskrun.CodeInvalid, Field: "run_mode", Message: fmt.Sprintf("run mode %q: use unattended or attended", s)}
}

func parseLogonType(s string) (identity.LogonType, error) {
	if s == "" {
		return identity.LogonInteractive, nil
	}
	lt, err := identity.ParseLogonType(s)
	if err != nil {
		return "", &deskrun.Error{Code: deskrun.CodeInvalid, Field: "logon_type", Message: fmt.Sprintf("logon type %q: use interactive, batch or network", s)}
	}
	return lt, nil
}
