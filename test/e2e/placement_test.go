package e2e

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/agent"
	"github.com/deskrun/deskrun/internal/control"
	"github.com/deskrun/deskrun/internal/desktopflow"
	"github.com/deskrun/deskrun/internal/server"
	"github.com/deskrun/deskrun/internal/wire"
	"github.com/deskrun/deskrun/test/world"
)

// gate is an agent executor for desktop jobs that records the order runs
// start in and holds each until released. It stands in for the flow, so
// the test sees the scheduler's decisions alone (the real executor is
// tested in TestDesktopFlowRuns).
type gate struct {
	mu      sync.Mutex
	started []string // run ids, in start order
	release chan struct{}
	running chan string
}

func (g *gate) exec(ctx context.Context, raw json.RawMessage, _ func(string)) (json.RawMessage, error) {
	var p wire.DesktopPayload
	_ = json.Unmarshal(raw, &p)
	g.mu.Lock()
	g.started = append(g.started, p.RunID)
	g.mu.Unlock()
	g.running <- p.RunID
	select {
	case <-g.release:
	case <-ctx.Done():
	}
	return json.RawMessage(`{"exit_code":0}`), nil
}

func (g *gate) order() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.started...)
}

func TestPlacementOrder(t *testing.T) {
	t.Parallel()
	cfg := server.DefaultConfig()
	cfg.Data, cfg.Listen = t.TempDir(), "127.0.0.1:0"
	s := &server.Server{Config: cfg, Log: slog.New(slog.DiscardHandler), Version: "test"}
	require.NoError(t, s.Start(t.Context()))
	t.Cleanup(s.Stop)
	ctx := t.Context()
	admin := control.Actor{ID: "token:test", Role: deskrun.RoleAdmin}

	// Two machines: "busy" with one slot, and "other", offline.
	g := &gate{release: make(chan struct{}), running: make(chan string, 16)}
	enroll := func(name string) string {
		_, tok, err := s.Control.CreateToken(ctx, wire.TokenCreate{Kind: "enrollment"})
		require.NoError(t, err)
		dir := t.TempDir()
		_, err = agent.Enroll(ctx, agent.EnrollOptions{Token: tok, Name: name, StateDir: dir, Info: agent.HostInfo(agent.DefaultHostFiles, 1)})
		require.NoError(t, err)
		return dir
	}
	busyDir := enroll("busy")
	enroll("other")
	actx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	connected := make(chan struct{}, 1)
	ag := &agent.Agent{StateDir: busyDir, Log: slog.New(slog.DiscardHandler), Info: agent.HostInfo(agent.DefaultHostFiles, 1),
		Executors: map[string]agent.Executor{wire.JobDesktop: g.exec}, OnConnected: func() { connected <- struct{}{} }}
	go func() { _ = ag.Run(actx) }()
	<-connected

	// Connections are saved untested (no logon provider here).
	for _, c := range []struct{ name, machine, user string }{{"alice", "busy", "alice"}, {"bob", "busy", "bob"}, {"carol", "other", "carol"}} {
		_, _, err := s.Control.CreateConnection(ctx, admin, wire.ConnectionCreate{Name: c.name, Machine: c.machine, Username: c.user, Password: wire.Secret("pw"), SkipTest: true})
		require.NoError(t, err)
	}
	dir := world.FlowDir(t, "name: f\nrun: 'true'\n", nil)
	archive, _, _, err := desktopflow.Pack(dir)
	require.NoError(t, err)
	_, _, err = s.Control.PushDesktopFlow(ctx, admin, archive)
	require.NoError(t, err)
	start := func(conn, prio string) string {
		r, err := s.Control.StartRun(ctx, admin, "f", wire.RunCreate{Connection: conn, Priority: prio})
		require.NoError(t, err)
		return r.ID
	}

	first := start("alice", "normal")
	require.Equal(t, first, <-g.running)
	// The machine is full: these wait. A run for the offline machine waits
	// too, and blocks nobody.
	blocked := start("carol", "high")
	n1 := start("bob", "normal")
	n2 := start("alice", "normal")
	h1 := start("bob", "high")
	waitRun := func(id string, cond func(*deskrun.Run) bool) *deskrun.Run {
		var r *deskrun.Run
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			r, err = s.Store.GetRun(ctx, id)
			require.NoError(t, err)
			if cond(r) {
				return r
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("run %s: %s (%s)", id, r.State, r.PlacementReason)
		return nil
	}
	waitRun(n1, func(r *deskrun.Run) bool { return r.PlacementReason != "" })
	require.Contains(t, waitRun(blocked, func(r *deskrun.Run) bool { return r.PlacementReason != "" }).PlacementReason, "offline")
	require.Contains(t, waitRun(n1, func(r *deskrun.Run) bool { return true }).PlacementReason, "busy")

	// Each release frees the slot: high priority first, then oldest; the
	// run for the offline machine never holds the others back.
	for range 3 {
		g.release <- struct{}{}
		<-g.running
	}
	g.release <- struct{}{}
	require.Equal(t, []string{first, h1, n1, n2}, g.order())
	for _, id := range []string{first, h1, n1, n2} {
		waitRun(id, func(r *deskrun.Run) bool { return r.State == deskrun.RunSucceeded })
	}
	r, err := s.Store.GetRun(ctx, blocked)
	require.NoError(t, err)
	require.Equal(t, deskrun.RunQueued, r.State)

	// One unattended run per user at a time, even with free slots.
	g2 := &gate{release: make(chan struct{}), running: make(chan string, 16)}
	wideDir := enroll("wide")
	connected2 := make(chan struct{}, 1)
	ag2 := &agent.Agent{StateDir: wideDir, Log: slog.New(slog.DiscardHandler), Info: agent.HostInfo(agent.DefaultHostFiles, 2),
		Executors: map[string]agent.Executor{wire.JobDesktop: g2.exec}, OnConnected: func() { connected2 <- struct{}{} }}
	go func() { _ = ag2.Run(actx) }()
	<-connected2
	for _, c := range []string{"dave", "erin"} {
		_, _, err := s.Control.CreateConnection(ctx, admin, wire.ConnectionCreate{Name: c + "-w", Machine: "wide", Username: c, Password: wire.Secret("pw"), SkipTest: true})
		require.NoError(t, err)
	}
	d1 := start("dave-w", "normal")
	require.Equal(t, d1, <-g2.running)
	d2 := start("dave-w", "normal")
	e1 := start("erin-w", "normal")
	require.Equal(t, e1, <-g2.running, "erin takes the free slot while dave's second run waits")
	require.Equal(t, deskrun.RunQueued, waitRun(d2, func(r *deskrun.Run) bool { return r.PlacementReason != "" }).State)
	g2.release <- struct{}{}
	require.Equal(t, d2, <-g2.running)
	g2.release <- struct{}{}
	g2.release <- struct{}{}
}
