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
	// Client is POST /api/v1/jobs?wait= answered with the job succeeded,
	// seen by the API client.
	Client Percentiles `json:"client"`
	// Create was the POST alone when the client then waited with a GET;
	// the one POST ?wait= now does both, so it equals Client (kept for
	// the report's "POST" row and the JSON).
	Create Percentiles `json:"create"`
	// Server is the job's created_at → finished_at, both stamped by the
	// server: commit, push to the agent, ack, run, result, commit.
	Server Percentiles `json:"server"`
}

// RoundTripEnv is a running server with one real agent connected to it
// over the real TLS WebSocket, and an API client (Server, Client and
// Machine).
type RoundTripEnv struct {
	inProcess

	tmp string // the data directory, when it is a temporary one
}

// StartRoundTrip starts an in-process server on a loopback port, enrolls
// a real agent (agent.Enroll) and runs it (agent.Agent) until it is
// connected.
func StartRoundTrip(ctx context.Context, o RoundTripOptions) (_ *RoundTripEnv, err error) {
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
	err = env.start(ctx, inProcessOptions{ServerData: filepath.Join(data, "server"), AgentState: filepath.Join(data, "agent"),
		AgentName: "bench-agent", SQLiteSync: o.SQLiteSync, Log: o.Log})
	if err != nil {
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
func (e *RoundTripEnv) Close() {
	e.stop()
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
	ss := make([]time.Duration, 0, o.N)
	for range o.N {
		s, err := env.Once(ctx)
		if err != nil {
			return nil, err
		}
		cs, ss = append(cs, s.Client), append(ss, s.Server)
	}
	c := Summarize(cs)
	return &RoundTripResult{SQLiteSync: env.Server.Config.SQLiteSync, Client: c, Create: c, Server: Summarize(ss)}, nil
}
