package e2e

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/agent"
	"github.com/deskrun/deskrun/internal/control"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/server"
	"github.com/deskrun/deskrun/internal/wire"
)

// flakyDirectory answers like a provider whose directory is unreachable
// for the first `down` logons, then accepts the password. It stands in for
// a domain controller outage, which the LDAP provider's own tests provoke
// for real; here it drives the control layer's retry policy.
type flakyDirectory struct {
	down  atomic.Int32
	calls atomic.Int32
}

func (f *flakyDirectory) Logon(_ context.Context, req identity.Request) (*identity.Result, error) {
	if f.calls.Add(1) <= f.down.Load() {
		return nil, identity.Fail(identity.ReasonNoLogonServers, &deskrun.ProviderResult{Name: "test", Result: "unreachable"})
	}
	if string(req.Password) != "right" {
		return nil, identity.Fail(identity.ReasonWrongPassword, &deskrun.ProviderResult{Name: "test"})
	}
	return &identity.Result{Identity: identity.Identity{Username: req.Name.User, UID: 4242}}, nil
}

func startInProcess(t *testing.T, p identity.Provider, mutate func(*server.Config)) *server.Server {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.Data, cfg.Listen = t.TempDir(), "127.0.0.1:0"
	if mutate != nil {
		mutate(&cfg)
	}
	s := &server.Server{Config: cfg, Log: slog.New(slog.DiscardHandler), Version: "test"}
	require.NoError(t, s.Start(t.Context()))
	t.Cleanup(s.Stop)
	s.Control.Conn.TransientBackoff, s.Control.Conn.MaxBackoff = 10*time.Millisecond, 40*time.Millisecond
	_, tok, err := s.Control.CreateToken(t.Context(), wire.TokenCreate{Kind: "enrollment"})
	require.NoError(t, err)
	dir := t.TempDir()
	_, err = agent.Enroll(t.Context(), agent.EnrollOptions{Token: tok, Name: "m1", StateDir: dir, Info: agent.HostInfo(agent.DefaultHostFiles, 1)})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	connected := make(chan struct{}, 1)
	ag := &agent.Agent{StateDir: dir, Log: slog.New(slog.DiscardHandler), Info: agent.HostInfo(agent.DefaultHostFiles, 1), Logon: p,
		OnConnected: func() {
			select {
			case connected <- struct{}{}:
			default:
			}
		}}
	go func() { _ = ag.Run(ctx) }()
	<-connected
	return s
}

func TestTransientFailuresAreRetriedAndDoNotBreak(t *testing.T) {
	t.Parallel()
	p := &flakyDirectory{}
	s := startInProcess(t, p, nil)
	admin := control.Actor{ID: "token:test", Role: deskrun.RoleAdmin}
	ctx := t.Context()
	_, _, err := s.Control.CreateConnection(ctx, admin, wire.ConnectionCreate{Name: "c", Machine: "m1", Username: "alice", Password: wire.Secret("right")})
	require.NoError(t, err)
	require.EqualValues(t, 1, p.calls.Load())

	// The directory goes away for two attempts: the test retries and succeeds.
	p.down.Store(3) // calls 2 and 3 fail: the first call above counted

	c, _, err := s.Control.TestConnection(ctx, admin, "c", false)
	require.NoError(t, err)
	require.Equal(t, deskrun.ConnectionHealthy, c.State)
	require.EqualValues(t, 4, p.calls.Load(), "two transient failures, then a success")

	// Down for longer than the retries: the error is NoLogonServers, and the
	// connection is not broken.
	p.down.Store(100)
	c, _, err = s.Control.TestConnection(ctx, admin, "c", false)
	require.Equal(t, identity.ReasonNoLogonServers, errorReason(err))
	require.NotEqual(t, deskrun.ConnectionBroken, c.State)
	require.Equal(t, identity.ReasonNoLogonServers, c.Reason)
	// The next use still reaches the machine (no breaker for transient reasons).
	before := p.calls.Load()
	_, _, err = s.Control.TestConnection(ctx, admin, "c", false)
	require.Error(t, err)
	require.Greater(t, p.calls.Load(), before)
}

func TestPeriodicRetest(t *testing.T) {
	t.Parallel()
	p := &flakyDirectory{}
	s := startInProcess(t, p, func(c *server.Config) { c.RetestInterval = time.Hour })
	admin := control.Actor{ID: "token:test", Role: deskrun.RoleAdmin}
	ctx := t.Context()
	_, _, err := s.Control.CreateConnection(ctx, admin, wire.ConnectionCreate{Name: "fresh", Machine: "m1", Username: "alice", Password: wire.Secret("right")})
	require.NoError(t, err)
	_, _, err = s.Control.CreateConnection(ctx, admin, wire.ConnectionCreate{Name: "old", Machine: "m1", Username: "bob", Password: wire.Secret("right")})
	require.NoError(t, err)

	// Nothing is due yet.
	n, err := s.Control.RetestDue(ctx)
	require.NoError(t, err)
	require.Zero(t, n)

	// Two hours later both are due; "old" has meanwhile broken (its
	// password changed): it is not re-tested, so it makes no more attempts.
	clock := s.Control.Now
	s.Control.Now = func() time.Time { return clock().Add(2 * time.Hour) }
	c, err := s.Store.GetConnectionByName(ctx, "old")
	require.NoError(t, err)
	c.State, c.Reason = deskrun.ConnectionBroken, identity.ReasonWrongPassword
	require.NoError(t, s.Store.SetConnectionHealth(ctx, c))
	before := p.calls.Load()
	n, err = s.Control.RetestDue(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, before+1, p.calls.Load())
}

func errorReason(err error) string {
	var de *deskrun.Error
	if errors.As(err, &de) {
		return de.Reason
	}
	return ""
}
