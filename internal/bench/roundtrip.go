package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/wire"
)

// RoundTripOptions configure the job round-trip scenario.
type RoundTripOptions struct {
	// N round trips are measured after Warmup unmeasured ones.
	N, Warmup int
	// Command and Env run deskrun (see worldOptions).
	Command, Env []string
	// Data is the server's data directory; empty means a fresh temporary
	// one, removed afterwards. Its file system decides what an fsync
	// costs, and a seeded one measures the cost of stored history.
	Data string
	// SQLiteSync is FULL (the default, durable) or NORMAL.
	SQLiteSync string
}

// RoundTripResult is what the scenario measured.
type RoundTripResult struct {
	SQLiteSync string `json:"sqlite_sync"`
	// Client is POST /api/v1/jobs?wait= answered with the job succeeded,
	// seen by the API client.
	Client Percentiles `json:"client"`
	// Server is the job's created_at → finished_at, both stamped by the
	// server: commit, push to the agent, run, result, commit.
	Server Percentiles `json:"server"`
	// ServerCPU and AgentCPU are each process's CPU time per measured
	// round trip.
	ServerCPU time.Duration `json:"server_cpu_per_op_ns"`
	AgentCPU  time.Duration `json:"agent_cpu_per_op_ns"`
}

// RoundTripEnv is a server process with one real agent process connected
// to it, and an API client.
type RoundTripEnv struct{ *world }

// StartRoundTrip starts `deskrun server` on a loopback port, enrolls an
// agent and runs it (`deskrun agent run`) until it is connected.
func StartRoundTrip(ctx context.Context, o RoundTripOptions) (_ *RoundTripEnv, err error) {
	env := &RoundTripEnv{&world{}}
	err = env.start(ctx, worldOptions{Command: o.Command, Env: o.Env, Data: o.Data, SQLiteSync: o.SQLiteSync, AgentName: "bench-agent"})
	if err != nil {
		env.Close()
		return nil, err
	}
	return env, nil
}

// Sample is one measured round trip.
type Sample struct {
	Client time.Duration // POST /api/v1/jobs?wait= answered, job succeeded
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
	if j.State != string(deskrun.JobSucceeded) {
		return Sample{}, fmt.Errorf("job %s ended %s, not succeeded (error: %v)", j.ID, j.State, j.Error)
	}
	return Sample{Client: total, Server: j.FinishedAt.Sub(j.CreatedAt)}, nil
}

// Close stops the agent and the server and removes temporary data.
func (e *RoundTripEnv) Close() { _ = e.stop() }

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
	return env.measure(ctx, o.N, o.Warmup)
}

func (e *RoundTripEnv) measure(ctx context.Context, n, warmup int) (*RoundTripResult, error) {
	for range warmup {
		if _, err := e.Once(ctx); err != nil {
			return nil, err
		}
	}
	s0, _, err := e.Server.CPU()
	if err != nil {
		return nil, err
	}
	a0, _, err := e.Agent.CPU()
	if err != nil {
		return nil, err
	}
	cs := make([]time.Duration, 0, n)
	ss := make([]time.Duration, 0, n)
	for range n {
		s, err := e.Once(ctx)
		if err != nil {
			return nil, err
		}
		cs, ss = append(cs, s.Client), append(ss, s.Server)
	}
	s1, _, err := e.Server.CPU()
	if err != nil {
		return nil, err
	}
	a1, _, err := e.Agent.CPU()
	if err != nil {
		return nil, err
	}
	return &RoundTripResult{SQLiteSync: e.SQLiteSync, Client: Summarize(cs), Server: Summarize(ss),
		ServerCPU: (s1 - s0) / time.Duration(n), AgentCPU: (a1 - a0) / time.Duration(n)}, nil
}
