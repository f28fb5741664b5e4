package bench

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/agent"
	"github.com/deskrun/deskrun/internal/client"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/server"
	"github.com/deskrun/deskrun/internal/wire"
)

// inProcess is the world of the round-trip and desktop scenarios: a
// server in this process, one real agent (agent.Enroll, agent.Agent)
// connected to it over the real TLS WebSocket, and an admin API client.
// (The agents scenario runs the server as its own process instead, so
// that its memory is its own.)
type inProcess struct {
	Server  *server.Server
	Client  *client.Client
	Machine string // the agent's machine ID

	cancel context.CancelFunc // stops the agent
	done   chan error         // the agent's Run result
}

type inProcessOptions struct {
	ServerData string // the server's data directory
	AgentState string // the agent's state directory
	AgentName  string
	Slots      int    // the machine's slots; 0 means 1
	SQLiteSync string // FULL or NORMAL; empty keeps the server's default
	Log        *slog.Logger

	// The desktop scenarios' agent logs users on, drops to them through
	// a real deskrun binary and reaps their runs; the round trip's agent
	// only runs no-op jobs and leaves these empty.
	Logon           identity.Provider
	RunAsExecutable string
	ReapRuns        bool
}

// start starts the server on a loopback port the kernel chooses (its URL,
// and so the enrollment token, names that port), enrolls the agent and
// runs it until the server sees it online. On error, stop undoes what was
// started.
func (p *inProcess) start(ctx context.Context, o inProcessOptions) error {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg := server.DefaultConfig()
	cfg.Listen, cfg.Data, cfg.LogLevel = "127.0.0.1:0", o.ServerData, "warn"
	if o.SQLiteSync != "" {
		cfg.SQLiteSync = o.SQLiteSync
	}
	s := &server.Server{Config: cfg, Log: log, Version: "bench"}
	if err := s.Start(ctx); err != nil {
		return fmt.Errorf("start server: %w", err)
	}
	p.Server = s
	var err error
	if p.Client, err = client.New(s.Config.URL, s.AdminToken, s.TLS.CAPEM); err != nil {
		return err
	}
	_, tok, err := s.Control.CreateToken(ctx, wire.TokenCreate{Kind: string(deskrun.TokenEnrollment), Name: "bench agent"})
	if err != nil {
		return err
	}
	info := agent.HostInfo(agent.DefaultHostFiles, max(o.Slots, 1))
	m, err := agent.Enroll(ctx, agent.EnrollOptions{Token: tok, Name: o.AgentName, StateDir: o.AgentState, Info: info, Force: true})
	if err != nil {
		return fmt.Errorf("enroll agent: %w", err)
	}
	p.Machine = m.ID
	a := &agent.Agent{StateDir: o.AgentState, Log: log, Info: info,
		Logon: o.Logon, RunAsExecutable: o.RunAsExecutable, ReapRuns: o.ReapRuns}
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p.cancel, p.done = cancel, make(chan error, 1)
	go func() { p.done <- a.Run(actx) }()
	return p.waitOnline(ctx, 15*time.Second)
}

// waitOnline waits for the server to see the agent connected.
func (p *inProcess) waitOnline(ctx context.Context, limit time.Duration) error {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	hub := p.Server.Hub
	for {
		changed := hub.PresenceChanged() // before Online: no change is missed
		if hub.Online(p.Machine) {
			return nil
		}
		select {
		case err := <-p.done:
			p.done <- err // for stop
			return fmt.Errorf("agent stopped before connecting: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("agent did not connect within %s", limit)
		case <-changed:
		}
	}
}

// stop stops the agent, then the server. It is safe on a half-started
// world and more than once.
func (p *inProcess) stop() {
	if p.cancel != nil {
		p.cancel()
		<-p.done
		p.cancel = nil
	}
	if p.Server != nil {
		p.Server.Stop()
		p.Server = nil
	}
}
