package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/client"
	"github.com/deskrun/deskrun/internal/pki"
	"github.com/deskrun/deskrun/internal/wire"
)

// TargetNoopRunsPS is issue #9's throughput target for durable no-op runs.
const TargetNoopRunsPS = 2000.0

// NoopRunsOptions configure the durable no-op runs scenario: desktop-flow
// runs go through everything the server does for a real one (API, token
// check, insert, queue, placement, assignment, job, push, progress,
// result, the run's end, each a durable SQLite commit), to agents whose
// executor does nothing: no logon, no process. It measures the
// orchestrator, which a real run's PAM hash and process start would hide.
type NoopRunsOptions struct {
	// Command and Env run `deskrun server` (see worldOptions).
	Command, Env []string
	Data         string
	SQLiteSync   string
	// Machines simulated agents, each with Slots slots and one connection
	// (its own user) per slot.
	Machines, Slots int
	// Concurrency lists the closed-loop levels: that many clients each
	// start a run and wait for its end (POST …/runs?wait=), again and
	// again, for Step. The ramp stops early when a level gains under 5 %.
	Concurrency []int
	Step        time.Duration
	// ProfileDir, if set, receives the server's CPU profile (server.pprof).
	ProfileDir string
	Progress   io.Writer
}

// NoopLevel is one closed-loop level of the ramp.
type NoopLevel struct {
	Concurrency int         `json:"concurrency"`
	Runs        int         `json:"runs"`
	Failed      int         `json:"failed"`
	RunsPerSec  float64     `json:"runs_per_sec"`
	Latency     Percentiles `json:"latency"` // POST …/runs?wait= answered with the run ended
	// Stages of the runs, from their stamps: created → assigned (queue and
	// placement), assigned → logon_at (assignment and job commits, push,
	// the agent's first progress), logon → finished (progress and result
	// commits), created → finished.
	Queue    Percentiles `json:"queue"`
	Push     Percentiles `json:"push"`
	Finish   Percentiles `json:"finish"`
	InServer Percentiles `json:"in_server"`
	// CPU per run: the server process, and this process (clients and
	// simulated agents).
	ServerCPU time.Duration `json:"server_cpu_per_run_ns"`
	BenchCPU  time.Duration `json:"bench_cpu_per_run_ns"`
	// The store's commits per run, and write transactions per commit (how
	// many shared one), from the server's metrics.
	CommitsPerRun float64 `json:"commits_per_run"`
	TxPerCommit   float64 `json:"transactions_per_commit"`
}

// NoopRunsResult is the ramp and its best level.
type NoopRunsResult struct {
	SQLiteSync string      `json:"sqlite_sync"`
	Machines   int         `json:"machines"`
	Slots      int         `json:"slots"`
	Levels     []NoopLevel `json:"levels"`
	// Saturation is the level with the most runs per second.
	Saturation NoopLevel `json:"saturation"`
	Met        bool      `json:"met"`
}

// NoopRuns runs the ramp.
func NoopRuns(ctx context.Context, o NoopRunsOptions) (_ *NoopRunsResult, err error) {
	if o.Machines <= 0 || o.Slots <= 0 || len(o.Concurrency) == 0 || o.Step <= 0 {
		return nil, errors.New("noop runs: machines, slots, concurrency and step must be set")
	}
	progress := func(format string, a ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", a...)
		}
	}
	if _, err := RaiseFileLimit(); err != nil {
		return nil, err
	}
	var w world
	defer func() { err = errors.Join(err, w.stop()) }()
	if err := w.start(ctx, worldOptions{Command: o.Command, Env: o.Env, Data: o.Data, SQLiteSync: o.SQLiteSync,
		NoAgent: true, ProfileDir: o.ProfileDir}); err != nil {
		return nil, err
	}
	actx, stopAgents := context.WithCancel(ctx)
	var agents sync.WaitGroup
	defer func() {
		stopAgents()
		agents.Wait()
	}()
	conns, err := setupNoopWorld(ctx, actx, &w, o, &agents)
	if err != nil {
		return nil, err
	}
	progress("noop runs: server %s, %d simulated machines × %d slots, %d connections", w.URL, o.Machines, o.Slots, len(conns))

	// One API client per 16 submitters: a client keeps 16 idle
	// connections, and a submitter must never pay a TLS handshake.
	res := &NoopRunsResult{SQLiteSync: w.SQLiteSync, Machines: o.Machines, Slots: o.Slots}
	for _, c := range o.Concurrency {
		lv, err := noopLevel(ctx, &w, conns, c, o.Step)
		if err != nil {
			return nil, err
		}
		progress("  %4d concurrent: %6.0f runs/s, latency %s, server CPU %s/run", c, lv.RunsPerSec, lv.Latency, lv.ServerCPU)
		res.Levels = append(res.Levels, *lv)
		if lv.RunsPerSec > res.Saturation.RunsPerSec*1.05 {
			res.Saturation = *lv
		} else if lv.RunsPerSec > res.Saturation.RunsPerSec {
			res.Saturation = *lv
			break
		} else {
			break
		}
	}
	res.Met = res.Saturation.RunsPerSec >= TargetNoopRunsPS
	return res, nil
}

const noopFlow = "bench-noop"

// setupNoopWorld enrolls and connects the simulated machines (their
// executors answer every job at once), creates one connection per slot
// (untested: no agent would log anyone on) and pushes the flow.
func setupNoopWorld(ctx, actx context.Context, w *world, o NoopRunsOptions, agents *sync.WaitGroup) ([]string, error) {
	tok, err := w.Client.CreateToken(ctx, wire.TokenCreate{Kind: string(deskrun.TokenEnrollment), Name: "bench noop", Uses: o.Machines})
	if err != nil {
		return nil, err
	}
	et, err := wire.ParseEnrollmentToken(tok.Secret)
	if err != nil {
		return nil, err
	}
	cfg, err := pki.PoolConfig(w.CAPEM, "127.0.0.1")
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: 4}}
	var conns []string
	for i := range o.Machines {
		name := fmt.Sprintf("noop-%d", i)
		a, err := enrollSim(ctx, hc, w.URL, et, name)
		if err != nil {
			return nil, err
		}
		a.slots = o.Slots
		ws, _, err := a.connect(ctx, hc, w.URL)
		if err != nil {
			return nil, err
		}
		agents.Add(1)
		go func() {
			defer agents.Done()
			a.serveNoop(actx, ws)
		}()
		for s := range o.Slots {
			cn := fmt.Sprintf("noop-%d-%d", i, s)
			if _, err := w.Client.CreateConnection(ctx, wire.ConnectionCreate{Name: cn, Machine: a.machineID,
				Username: fmt.Sprintf("noop%d", s), Password: wire.Secret("unused-by-noop-agents"), SkipTest: true}); err != nil {
				return nil, fmt.Errorf("create connection %s: %w", cn, err)
			}
			conns = append(conns, cn)
		}
	}
	dir, err := os.MkdirTemp("", "deskrun-bench-flow-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := pushFlow(ctx, w.Client, dir, noopFlow, "true"); err != nil {
		return nil, err
	}
	// Wait until the server has every machine online with its slots.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ms, err := w.Client.Machines(ctx)
		if err != nil {
			return nil, err
		}
		online := 0
		for _, m := range ms {
			if m.State == string(deskrun.MachineOnline) && m.Slots == o.Slots {
				online++
			}
		}
		if online == o.Machines {
			return conns, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d simulated machines online after 30s", online, o.Machines)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serveNoop is a simulated agent's executor: every job pushed to it
// succeeds at once, reported the way the real agent reports a fast run
// (no ack when the result follows within 20 ms; the two state progress
// lines; the result). What the server sends besides jobs is discarded.
func (a *simAgent) serveNoop(ctx context.Context, ws *websocket.Conn) {
	defer ws.CloseNow()
	out, _ := json.Marshal(wire.DesktopOutput{ExitCode: 0})
	var mu sync.Mutex // one writer at a time
	write := func(f *wire.Frame) error {
		mu.Lock()
		defer mu.Unlock()
		return wsjson.Write(ctx, ws, f)
	}
	go func() { // heartbeats
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if write(&wire.Frame{Type: wire.FrameHeartbeat}) != nil {
					return
				}
			}
		}
	}()
	for {
		var f wire.Frame
		if err := wsjson.Read(ctx, ws, &f); err != nil {
			return
		}
		if f.Type != wire.FrameJob || f.Job == nil {
			continue
		}
		id := f.Job.ID
		for _, msg := range []string{"state:logging-on", "state:running"} {
			if f.Job.Kind != wire.JobDesktop {
				break
			}
			if write(&wire.Frame{Type: wire.FrameProgress, Progress: &wire.JobProgress{ID: id, Message: msg}}) != nil {
				return
			}
		}
		if write(&wire.Frame{Type: wire.FrameResult, Result: &wire.JobResult{ID: id, OK: true, Output: out}}) != nil {
			return
		}
	}
}

// noopLevel runs one closed-loop level for step and summarises it.
func noopLevel(ctx context.Context, w *world, conns []string, concurrency int, step time.Duration) (*NoopLevel, error) {
	clients := make([]*client.Client, (concurrency+15)/16)
	for i := range clients {
		c, err := client.New(w.URL, w.token, w.CAPEM)
		if err != nil {
			return nil, err
		}
		clients[i] = c
	}
	type sample struct {
		lat time.Duration
		run wire.Run
	}
	var (
		mu      sync.Mutex
		samples []sample
		failed  atomic.Int64
		firstE  atomic.Value
		wg      sync.WaitGroup
	)
	s0, _, err := w.Server.CPU()
	if err != nil {
		return nil, err
	}
	b0, _ := ReadCPU(os.Getpid())
	m0, err := w.scrape(ctx)
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, step)
	defer cancel()
	t0 := time.Now()
	for i := range concurrency {
		cl := clients[i/16]
		conn := conns[i%len(conns)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := "/api/v1/desktopflows/" + url.PathEscape(noopFlow) + "/runs?wait=30s"
			for lctx.Err() == nil {
				t := time.Now()
				var r wire.Run
				// The request is not cut at the level's end: a run started
				// is waited for, so it is counted once, whole.
				err := cl.Do(context.WithoutCancel(lctx), http.MethodPost, path, wire.RunCreate{Connection: conn}, &r)
				lat := time.Since(t)
				if err != nil || r.State != string(deskrun.RunSucceeded) {
					failed.Add(1)
					if err == nil {
						err = fmt.Errorf("run %s ended %s: %v", r.ID, r.State, r.Error)
					}
					firstE.CompareAndSwap(nil, err)
					continue
				}
				mu.Lock()
				samples = append(samples, sample{lat, r})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	wall := time.Since(t0)
	s1, _, err := w.Server.CPU()
	if err != nil {
		return nil, err
	}
	b1, _ := ReadCPU(os.Getpid())
	m1, err := w.scrape(ctx)
	if err != nil {
		return nil, err
	}
	if len(samples) == 0 {
		return nil, fmt.Errorf("noop runs: no run succeeded at concurrency %d: %v", concurrency, firstE.Load())
	}
	lv := &NoopLevel{Concurrency: concurrency, Runs: len(samples), Failed: int(failed.Load()),
		RunsPerSec: float64(len(samples)) / wall.Seconds(),
		ServerCPU:  (s1 - s0) / time.Duration(len(samples)), BenchCPU: (b1 - b0) / time.Duration(len(samples))}
	const commits, txs = "deskrun_store_commits_total", "deskrun_store_write_transactions_total"
	lv.CommitsPerRun = (m1[commits] - m0[commits]) / float64(len(samples))
	if c := m1[commits] - m0[commits]; c > 0 {
		lv.TxPerCommit = (m1[txs] - m0[txs]) / c
	}
	var lat, queue, push, finish, in []time.Duration
	for _, s := range samples {
		r := s.run
		lat = append(lat, s.lat)
		queue = append(queue, r.AssignedAt.Sub(r.CreatedAt))
		push = append(push, r.LogonAt.Sub(r.AssignedAt))
		finish = append(finish, r.FinishedAt.Sub(r.LogonAt))
		in = append(in, r.FinishedAt.Sub(r.CreatedAt))
	}
	lv.Latency, lv.Queue, lv.Push, lv.Finish, lv.InServer = Summarize(lat), Summarize(queue), Summarize(push), Summarize(finish), Summarize(in)
	return lv, nil
}
