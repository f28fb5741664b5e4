package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/agent"
	"github.com/deskrun/deskrun/internal/client"
	"github.com/deskrun/deskrun/internal/server"
	"github.com/deskrun/deskrun/internal/wire"
)

// RoundTripOptions configure the job round-trip scenario.
type RoundTripOptions struct {
	// N round trips are measured after Warmup unmeasured ones.
	N, Warmup int
	// Data is the server's data directory; empty means a fresh temporary
	// one, removed afterwards. Its file system decides what an fsync costs.
	Data string
	// SQLiteSync is FULL (the default, durable) or NORMAL.
	SQLiteSync string
	// Log receives the server's and the agent's logs; nil discards them.
	Log *slog.Logger
}

// RoundTripResult is what the scenario measured.
type RoundTripResult struct {
	SQLiteSync string `json:"sqlite_sync"`
	// Client is POST /api/v1/jobs → GET /api/v1/jobs/{id}?wait= answered
	// with the job succeeded, seen by the API client.
	Client Percentiles `json:"client"`
	// Create is the POST alone: the job is committed and pushed.
	Create Percentiles `json:"create"`
	// Server is the job's created_at → finished_at, both stamped by the
	// server: commit, push to the agent, ack, run, result, commit.
	Server Percentiles `json:"server"`
}

// RoundTripEnv is a running server with one real agent connected to it
// over the real TLS WebSocket, and an API client.
type RoundTripEnv struct {
	Server  *server.Server
	Client  *client.Client
	Machine string

	tmp    string
	cancel context.CancelFunc
	done   chan error
}

// StartRoundTrip starts an in-process server on a free loopback port,
// enrolls a real agent (agent.Enroll) and runs it (agent.Agent) until it
// is connected.
func StartRoundTrip(ctx context.Context, o RoundTripOptions) (_ *RoundTripEnv, err error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	env := &RoundTripEnv{}
	defer func() {
		if err != nil {
			env.Close()
		}
	}()
	data := o.Data
	if data == "" {
		if env.tmp, err = os.MkdirTemp("", "deskrun-bench-"); err != nil {
			return nil, err
		}
		data = env.tmp
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cfg := server.DefaultConfig()
	cfg.Listen, cfg.Data, cfg.LogLevel = addr, filepath.Join(data, "server"), "warn"
	if o.SQLiteSync != "" {
		cfg.SQLiteSync = o.SQLiteSync
	}
	env.Server = &server.Server{Config: cfg, Log: log, Version: "bench"}
	if err := env.Server.Start(ctx); err != nil {
		env.Server = nil
		return nil, fmt.Errorf("start server: %w", err)
	}
	s := env.Server
	if env.Client, err = client.New(s.Config.URL, s.AdminToken, s.TLS.CAPEM); err != nil {
		return nil, err
	}

	_, tok, err := s.Control.CreateToken(ctx, wire.TokenCreate{Kind: string(deskrun.TokenEnrollment), Name: "bench agent"})
	if err != nil {
		return nil, err
	}
	stateDir := filepath.Join(data, "agent")
	info := agent.HostInfo(agent.DefaultHostFiles, 1)
	m, err := agent.Enroll(ctx, agent.EnrollOptions{Token: tok, Name: "bench-agent", StateDir: stateDir, Info: info, Force: true})
	if err != nil {
		return nil, fmt.Errorf("enroll agent: %w", err)
	}
	env.Machine = m.ID

	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	env.cancel = cancel
	env.done = make(chan error, 1)
	a := &agent.Agent{StateDir: stateDir, Log: log, Info: info}
	go func() { env.done <- a.Run(actx) }()
	deadline := time.Now().Add(15 * time.Second)
	for !s.Hub.Online(m.ID) {
		select {
		case err := <-env.done:
			env.done <- err
			return nil, fmt.Errorf("agent stopped before connecting: %v", err)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, errors.New("agent did not connect within 15s")
		}
	}
	return env, nil
}

// Sample is one measured round trip.
type Sample struct {
	Client time.Duration // POST /api/v1/jobs?wait= answered, job succeeded
	Create time.Duration // the same request (kept for the report's columns)
	Server time.Duration // the job's created_at → finished_at
}

// Once runs one no-op job and times it.
func (e *RoundTripEnv) Once(ctx context.Context) (Sample, error) {
	t0 := time.Now()
	j, err := e.Client.CreateJob(ctx, wire.JobCreate{Machine: e.Machine, Kind: deskrun.JobNoop}, 10*time.Second)
	if err != nil {
		return Sample{}, fmt.Errorf("create job: %w", err)
	}
	total := time.Since(t0)
	created := total
	if j.State != string(deskrun.JobSucceeded) {
		return Sample{}, fmt.Errorf("job %s ended %s, not succeeded (error: %v)", j.ID, j.State, j.Error)
	}
	return Sample{Client: total, Create: created, Server: j.FinishedAt.Sub(j.CreatedAt)}, nil
}

// Close stops the agent and the server and removes temporary data.
func (e *RoundTripEnv) Close() {
	if e.cancel != nil {
		e.cancel()
		<-e.done
	}
	if e.Server != nil {
		e.Server.Stop()
	}
	if e.tmp != "" {
		_ = os.RemoveAll(e.tmp)
	}
}

// RoundTrip measures o.N sequential no-op job round trips.
func RoundTrip(ctx context.Context, o RoundTripOptions) (*RoundTripResult, error) {
	if o.N <= 0 {
		return nil, errors.New("round trip: N must be positive")
	}
	env, err := StartRoundTrip(ctx, o)
	if err != nil {
		return nil, err
	}
	defer env.Close()
	for range o.Warmup {
		if _, err := env.Once(ctx); err != nil {
			return nil, err
		}
	}
	cs := make([]time.Duration, 0, o.N)
	ps := make([]time.Duration, 0, o.N)
	ss := make([]time.Duration, 0, o.N)
	for range o.N {
		s, err := env.Once(ctx)
		if err != nil {
			return nil, err
		}
		cs, ps, ss = append(cs, s.Client), append(ps, s.Create), append(ss, s.Server)
	}
	return &RoundTripResult{SQLiteSync: env.Server.Config.SQLiteSync, Client: Summarize(cs), Create: Summarize(ps), Server: Summarize(ss)}, nil
}
