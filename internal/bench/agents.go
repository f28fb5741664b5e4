package bench

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/pki"
	"github.com/deskrun/deskrun/internal/seal"
	"github.com/deskrun/deskrun/internal/wire"
)

// AgentsOptions configure the idle-agents scenario.
type AgentsOptions struct {
	// N simulated agents are enrolled and connected.
	N int
	// Heartbeat is the server's heartbeat interval (the agents follow it).
	Heartbeat time.Duration
	// CPUWindow is how long server CPU time is sampled with N agents
	// heartbeating, at least.
	CPUWindow time.Duration
	// Steady, if longer than CPUWindow, extends the steady phase (see
	// AgentsResult.Peak) up to that long, until the server has completed
	// two GC cycles.
	Steady time.Duration
	// Settle bounds the wait for the server's RSS to stop moving before
	// each memory reading.
	Settle time.Duration
	// Command starts deskrun: the scenario appends "server" and its flags.
	// Usually the path of the deskrun binary.
	Command []string
	// Env is added to the server's environment.
	Env []string
	// Data is the server's data directory; empty means a fresh temporary
	// one, removed afterwards.
	Data string
	// Progress, if set, receives one line per phase.
	Progress io.Writer
}

// MemStats are the server's Go runtime figures, scraped from /metrics.
type MemStats struct {
	HeapInuse  int64 `json:"heap_inuse_bytes"`
	StackInuse int64 `json:"stack_inuse_bytes"`
	// NextGC is the heap size at which the next collection starts: the
	// live heap of the last collection plus GOGC% of it (and of the
	// stacks), or less under GOMEMLIMIT. A running server's heap grows to
	// it between collections, and its RSS with it.
	NextGC     int64 `json:"next_gc_bytes"`
	Sys        int64 `json:"sys_bytes"`
	Goroutines int64 `json:"goroutines"`
	// The GC's settings as the server runs with them (GOGC, GOMEMLIMIT).
	GOGC       int64 `json:"gogc_percent"`
	GOMEMLIMIT int64 `json:"gomemlimit_bytes"`
}

// AgentsResult is what the idle-agents scenario measured.
type AgentsResult struct {
	N         int           `json:"agents"`
	Connected int           `json:"connected"` // deskrun_agents_connected at the end
	Heartbeat time.Duration `json:"heartbeat_interval_ns"`
	Enroll    time.Duration `json:"enroll_ns"`
	Connect   time.Duration `json:"connect_ns"`

	Before      Mem      `json:"before"` // enrolled, none connected, settled
	After       Mem      `json:"after"`  // all connected and idle, settled
	MemBefore   MemStats `json:"memstats_before"`
	MemAfter    MemStats `json:"memstats_after"`
	PerAgentRSS int64    `json:"per_agent_rss_bytes"` // from After: one reading, wherever the GC cycle was; see Peak
	PerAgentPSS int64    `json:"per_agent_pss_bytes"`
	// Go heap and goroutine stacks per agent: the part of RSS that is ours.
	PerAgentHeap   int64 `json:"per_agent_heap_inuse_bytes"`
	PerAgentStack  int64 `json:"per_agent_stack_inuse_bytes"`
	PerAgentNextGC int64 `json:"per_agent_next_gc_bytes"`

	// The open-file limits of the server and of this process (each holds
	// one socket per agent), and /proc/loadavg when the run started and
	// when it ended: the machine may be shared.
	ServerFileLimit int64  `json:"server_file_limit"`
	BenchFileLimit  int64  `json:"bench_file_limit"`
	LoadAvgStart    string `json:"loadavg_at_start"`
	LoadAvgEnd      string `json:"loadavg_at_end"`

	// Peak is the largest memory reading over the steady phase, which
	// lasts CPUWindow, or longer (up to AgentsOptions.Steady) until the
	// server has completed two GC cycles; GCCycles is how many it saw.
	Peak            Mem   `json:"peak"`
	GCCycles        int   `json:"gc_cycles"`
	PerAgentPeakRSS int64 `json:"per_agent_peak_rss_bytes"`
	PerAgentPeakPSS int64 `json:"per_agent_peak_pss_bytes"`

	IdleCPUPercent float64       `json:"idle_cpu_percent"` // no agent connected
	CPUWindow      time.Duration `json:"cpu_window_ns"`    // the steady phase, over which CPU is counted
	CPU            time.Duration `json:"cpu_ns"`           // server utime+stime in the window
	Heartbeats     int64         `json:"heartbeats"`
	CPUPercent     float64       `json:"cpu_percent"` // of one core
	// CPUPercentPer1000At10s scales CPUPercent linearly to 1,000 agents
	// heartbeating every 10 s (the default interval).
	CPUPercentPer1000At10s float64       `json:"cpu_percent_per_1000_agents_at_10s"`
	CPUPerHeartbeat        time.Duration `json:"cpu_per_heartbeat_ns"`
}

// AgentsSeries runs Agents once per count, each time with a fresh server
// process and data directory (a subdirectory of o.Data, if set), so that
// every count is measured from the same start.
func AgentsSeries(ctx context.Context, o AgentsOptions, counts []int) ([]*AgentsResult, error) {
	out := make([]*AgentsResult, 0, len(counts))
	for _, n := range counts {
		run := o
		run.N = n
		if o.Data != "" {
			run.Data = filepath.Join(o.Data, fmt.Sprintf("agents-%d", n))
		}
		r, err := Agents(ctx, run)
		if err != nil {
			return out, fmt.Errorf("%d agents: %w", n, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// fileLimitMargin is how many descriptors a process needs besides one
// socket per agent: listeners, the store, API connections.
const fileLimitMargin = 256

// Agents starts a deskrun server as its own process (so its memory is its
// own), enrolls o.N simulated agents through the enrollment endpoint,
// connects them over real TLS WebSockets with the real challenge/hello
// handshake, lets them idle with heartbeats, and measures the server.
func Agents(ctx context.Context, o AgentsOptions) (_ *AgentsResult, err error) {
	if o.N <= 0 || o.N > 10000 {
		return nil, errors.New("agents: N must be between 1 and 10000 (one enrollment token's uses)")
	}
	if len(o.Command) == 0 {
		return nil, errors.New("agents: no command to start the server with")
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = time.Second
	}
	if o.CPUWindow <= 0 {
		o.CPUWindow = 10 * time.Second
	}
	if o.Settle <= 0 {
		o.Settle = 30 * time.Second
	}
	progress := func(format string, a ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", a...)
		}
	}
	res := &AgentsResult{N: o.N, Heartbeat: o.Heartbeat, CPUWindow: o.CPUWindow, LoadAvgStart: loadAvg()}
	limit, err := RaiseFileLimit()
	if err != nil {
		return nil, fmt.Errorf("raise file limit: %w", err)
	}
	res.BenchFileLimit = int64(limit)
	if need := uint64(o.N + fileLimitMargin); limit < need {
		return nil, fmt.Errorf("agents: this process may open %d files and needs %d; raise the hard limit (ulimit -Hn)", limit, need)
	}

	srv, err := startServerProcess(ctx, o)
	if err != nil {
		return nil, err
	}
	defer func() {
		if serr := srv.stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	progress("server pid %d on %s", srv.Server.Pid(), srv.URL)
	// The server inherits this process's limit, and Go raises its soft
	// limit to the hard one at start; check what it got.
	if res.ServerFileLimit, err = fileLimit(srv.Server.Pid()); err != nil {
		return nil, err
	}
	if need := int64(o.N + fileLimitMargin); res.ServerFileLimit < need {
		return nil, fmt.Errorf("agents: the server may open %d files and needs %d; raise its hard limit (ulimit -Hn, LimitNOFILE=)", res.ServerFileLimit, need)
	}

	tok, err := srv.Client.CreateToken(ctx, wire.TokenCreate{Kind: string(deskrun.TokenEnrollment), Name: "bench agents", Uses: o.N, TTL: "1h"})
	if err != nil {
		return nil, fmt.Errorf("create enrollment token: %w", err)
	}
	et, err := wire.ParseEnrollmentToken(tok.Secret)
	if err != nil {
		return nil, err
	}

	t0 := time.Now()
	sims := make([]*simAgent, o.N)
	err = parallel(ctx, o.N, 2*runtime.NumCPU(), func(ctx context.Context, i int) error {
		a, err := enrollSim(ctx, srv.hc, srv.URL, et, fmt.Sprintf("bench-%05d", i))
		sims[i] = a
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	res.Enroll = time.Since(t0)
	progress("enrolled %d agents in %s", o.N, res.Enroll.Round(time.Millisecond))

	pid := srv.Server.Pid()
	cpu0, _ := ReadCPU(pid)
	t0 = time.Now()
	if res.Before, err = settle(ctx, pid, o.Settle); err != nil {
		return nil, err
	}
	cpu1, _ := ReadCPU(pid)
	res.IdleCPUPercent = 100 * float64(cpu1-cpu0) / float64(time.Since(t0))
	if res.MemBefore, err = srv.memStats(ctx); err != nil {
		return nil, err
	}
	progress("before: RSS %s, PSS %s", kb(res.Before.RSS), kb(res.Before.PSS))

	// Connect. Each agent runs until actx ends.
	actx, stopAgents := context.WithCancel(context.WithoutCancel(ctx))
	var beats, beatErrs atomic.Int64
	var wg sync.WaitGroup
	defer func() {
		stopAgents()
		wg.Wait()
	}()
	t0 = time.Now()
	err = parallel(ctx, o.N, 4*runtime.NumCPU(), func(ctx context.Context, i int) error {
		ws, hb, err := sims[i].connect(ctx, srv.hc, srv.URL)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sims[i].idle(actx, ws, hb, &beats, &beatErrs)
		}()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if err := srv.waitConnected(ctx, o.N, 30*time.Second); err != nil {
		return nil, err
	}
	res.Connect = time.Since(t0)
	progress("connected %d agents in %s", o.N, res.Connect.Round(time.Millisecond))

	if res.After, err = settle(ctx, pid, o.Settle); err != nil {
		return nil, err
	}
	if res.MemAfter, err = srv.memStats(ctx); err != nil {
		return nil, err
	}
	n := int64(o.N)
	res.PerAgentRSS = (res.After.RSS - res.Before.RSS) / n
	res.PerAgentPSS = (res.After.PSS - res.Before.PSS) / n
	res.PerAgentHeap = (res.MemAfter.HeapInuse - res.MemBefore.HeapInuse) / n
	res.PerAgentStack = (res.MemAfter.StackInuse - res.MemBefore.StackInuse) / n
	res.PerAgentNextGC = (res.MemAfter.NextGC - res.MemBefore.NextGC) / n
	progress("after: RSS %s, PSS %s; per agent RSS %d B, PSS %d B, heap %d B, stacks %d B, next GC %d B",
		kb(res.After.RSS), kb(res.After.PSS), res.PerAgentRSS, res.PerAgentPSS, res.PerAgentHeap, res.PerAgentStack, res.PerAgentNextGC)

	// Steady state: the server's CPU time and its peak memory over
	// CPUWindow, or up to Steady until two whole GC cycles have passed.
	b0, c0 := beats.Load(), mustCPU(pid)
	t0 = time.Now()
	if res.Peak, res.GCCycles, err = steady(ctx, srv, o.CPUWindow, o.Steady); err != nil {
		return nil, err
	}
	c1, elapsed := mustCPU(pid), time.Since(t0)
	res.PerAgentPeakRSS = (res.Peak.RSS - res.Before.RSS) / n
	res.PerAgentPeakPSS = (res.Peak.PSS - res.Before.PSS) / n
	progress("steady: %d GC cycles in %s; peak RSS %s, PSS %s; per agent RSS %d B, PSS %d B",
		res.GCCycles, elapsed.Round(time.Second), kb(res.Peak.RSS), kb(res.Peak.PSS), res.PerAgentPeakRSS, res.PerAgentPeakPSS)
	res.CPUWindow, res.Heartbeats, res.CPU = elapsed, beats.Load()-b0, c1-c0
	res.CPUPercent = 100 * float64(res.CPU) / float64(elapsed)
	res.CPUPercentPer1000At10s = res.CPUPercent * 1000 / float64(o.N) * float64(o.Heartbeat) / float64(10*time.Second)
	if res.Heartbeats > 0 {
		res.CPUPerHeartbeat = res.CPU / time.Duration(res.Heartbeats)
	}
	if e := beatErrs.Load(); e > 0 {
		return nil, fmt.Errorf("%d heartbeats failed", e)
	}
	if res.Connected, err = srv.metric(ctx, "deskrun_agents_connected"); err != nil {
		return nil, err
	}
	res.LoadAvgEnd = loadAvg()
	progress("heartbeats: %d in %s, server CPU %s (%.2f%% of a core); %.3f%% per 1,000 agents at 10 s",
		res.Heartbeats, elapsed.Round(time.Millisecond), res.CPU, res.CPUPercent, res.CPUPercentPer1000At10s)
	return res, nil
}

// steadyGCCycles is how many GC cycles the steady phase spans: the first
// one sets a heap goal from the idle agents' live heap, and the heap
// grows to that goal before the second.
const steadyGCCycles = 2

// steady reads the server's memory once a second for at least window and
// until the server has completed steadyGCCycles collections, or limit has
// passed, and returns the largest readings and the collections seen. A
// running server's RSS rises as its heap fills to the GC goal, and the
// runtime returns little of it after a collection, so the peak over whole
// GC cycles is what the server needs; one reading depends on where in its
// cycle it was taken.
func steady(ctx context.Context, srv *serverProcess, window, limit time.Duration) (peak Mem, cycles int, err error) {
	pid := srv.Server.Pid()
	gcs := func() (int, error) { return srv.metric(ctx, "go_gc_duration_seconds_count") }
	gc0, err := gcs()
	if err != nil {
		return peak, 0, err
	}
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; ; i++ {
		m, err := ReadMem(pid)
		if err != nil {
			return peak, cycles, err
		}
		peak.RSS, peak.PSS = max(peak.RSS, m.RSS), max(peak.PSS, m.PSS)
		elapsed := time.Since(start)
		if i%5 == 0 { // a scrape costs the server CPU, which is being measured
			gc, err := gcs()
			if err != nil {
				return peak, cycles, err
			}
			cycles = gc - gc0
		}
		if elapsed >= window && (cycles >= steadyGCCycles || elapsed >= limit) {
			return peak, cycles, nil
		}
		select {
		case <-ctx.Done():
			return peak, cycles, ctx.Err()
		case <-tick.C:
		}
	}
}

// fileLimit reads the soft open-file limit of process pid.
func fileLimit(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/limits: no open-files line", pid)
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(b))
}

func kb(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func mustCPU(pid int) time.Duration {
	d, _ := ReadCPU(pid)
	return d
}

// settle reads pid's memory once a second until three readings in a row
// agree within 1% (the heap has stopped moving), or limit passes.
func settle(ctx context.Context, pid int, limit time.Duration) (Mem, error) {
	deadline := time.Now().Add(limit)
	var last []Mem
	for {
		m, err := ReadMem(pid)
		if err != nil {
			return m, err
		}
		last = append(last, m)
		if len(last) > 3 {
			last = last[1:]
		}
		if len(last) == 3 {
			lo, hi := last[0].RSS, last[0].RSS
			for _, x := range last[1:] {
				lo, hi = min(lo, x.RSS), max(hi, x.RSS)
			}
			if hi-lo <= hi/100 {
				return m, nil
			}
		}
		if time.Now().After(deadline) {
			return m, nil
		}
		select {
		case <-ctx.Done():
			return m, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// freeAddr returns a loopback address with a port nobody listens on, for
// the server process: the scenario needs its URL before it starts, and
// the process does not report the port it would choose for :0. (In
// process, the server listens on :0 and derives its URL from the port.)
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// serverProcess is `deskrun server` as its own process (a world without
// an agent), with an HTTP client for the simulated agents that keeps
// enough connections alive for their enrollments.
type serverProcess struct {
	*world
	hc *http.Client
}

func startServerProcess(ctx context.Context, o AgentsOptions) (*serverProcess, error) {
	lease := max(60*time.Second, 3*o.Heartbeat)
	w := &world{}
	if err := w.start(ctx, worldOptions{Command: o.Command, Env: o.Env, Data: o.Data, NoAgent: true,
		ServerArgs: []string{"--heartbeat-interval", o.Heartbeat.String(), "--agent-lease", lease.String()}}); err != nil {
		_ = w.stop()
		return nil, err
	}
	cfg, err := pki.PoolConfig(w.CAPEM, "127.0.0.1")
	if err != nil {
		_ = w.stop()
		return nil, err
	}
	return &serverProcess{world: w, hc: &http.Client{Timeout: 30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: 64}}}, nil
}

func (p *serverProcess) metric(ctx context.Context, name string) (int, error) {
	m, err := p.scrape(ctx)
	if err != nil {
		return 0, err
	}
	v, ok := m[name]
	if !ok {
		return 0, fmt.Errorf("metrics: no %s", name)
	}
	return int(v), nil
}

func (p *serverProcess) memStats(ctx context.Context) (MemStats, error) {
	m, err := p.scrape(ctx)
	if err != nil {
		return MemStats{}, err
	}
	limit := int64(math.MaxInt64) // none
	if v := m["go_gc_gomemlimit_bytes"]; v < math.MaxInt64 {
		limit = int64(v)
	}
	return MemStats{HeapInuse: int64(m["go_memstats_heap_inuse_bytes"]), StackInuse: int64(m["go_memstats_stack_inuse_bytes"]),
		NextGC: int64(m["go_memstats_next_gc_bytes"]), Sys: int64(m["go_memstats_sys_bytes"]), Goroutines: int64(m["go_goroutines"]),
		GOGC: int64(m["go_gc_gogc_percent"]), GOMEMLIMIT: limit}, nil
}

// waitConnected polls deskrun_agents_connected until it reaches n.
func (p *serverProcess) waitConnected(ctx context.Context, n int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		got, err := p.metric(ctx, "deskrun_agents_connected")
		if err != nil {
			return err
		}
		if got == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d agents connected after %s", got, n, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// parallel runs f(ctx, i) for i in [0, n) on at most limit goroutines and
// returns the first error; the first error cancels the others' ctx.
func parallel(ctx context.Context, n, limit int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(limit, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(ctx, i); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}

// simAgent is an enrolled machine without the agent runtime: just its
// signing key and the protocol's handshake and heartbeats. It is lighter
// than agent.Enroll and agent.Agent on purpose, since one process runs up
// to 10,000 of them and only the server is measured: no state directory
// or key files, no host files read, one shared keep-alive HTTP client
// instead of a pinned one per enrollment, no executors or doctor. What
// the server sees (the enrollment request, the signed hello, text frames)
// is the real agent's.
type simAgent struct {
	name      string
	machineID string
	key       ed25519.PrivateKey
	slots     int // 0 means 1
}

func enrollSim(ctx context.Context, hc *http.Client, base string, et wire.EnrollmentToken, name string) (*simAgent, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	sk, err := seal.GenerateKey()
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(wire.EnrollRequest{TokenID: et.ID, Secret: et.Secret, Name: name, Info: simInfo(name, 1),
		SigningKey: pub, SealKey: sk.Public})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/v1/agent/enroll", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusCreated {
		return nil, fmt.Errorf("enroll %s: HTTP %d: %s", name, resp.StatusCode, rb)
	}
	var out wire.EnrollResponse
	if err := json.Unmarshal(rb, &out); err != nil {
		return nil, fmt.Errorf("enroll %s: %w", name, err)
	}
	return &simAgent{name: name, machineID: out.Machine.ID, key: priv}, nil
}

func simInfo(name string, slots int) wire.MachineInfo {
	return wire.MachineInfo{Hostname: name, OS: runtime.GOOS, Arch: runtime.GOARCH, AgentVersion: "bench",
		ProtocolVersion: wire.ProtocolVersion, JoinState: "standalone", Slots: max(slots, 1), RunAsAnyUser: true}
}

// connect dials the agent endpoint and does the challenge/hello/welcome
// handshake, as the real agent does.
func (a *simAgent) connect(ctx context.Context, hc *http.Client, base string) (*websocket.Conn, time.Duration, error) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(dctx, "wss"+strings.TrimPrefix(base, "https")+"/api/v1/agent/connect",
		&websocket.DialOptions{HTTPClient: hc, CompressionMode: websocket.CompressionDisabled})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		return nil, 0, fmt.Errorf("%s: dial: %w", a.name, err)
	}
	fail := func(err error) (*websocket.Conn, time.Duration, error) {
		ws.CloseNow()
		return nil, 0, fmt.Errorf("%s: %w", a.name, err)
	}
	var f wire.Frame
	if err := wsjson.Read(dctx, ws, &f); err != nil {
		return fail(err)
	}
	if f.Type != wire.FrameChallenge || f.Challenge == nil {
		return fail(fmt.Errorf("expected a challenge, got %q", f.Type))
	}
	hello := &wire.Hello{MachineID: a.machineID, ProtocolVersion: wire.ProtocolVersion, Info: simInfo(a.name, a.slots),
		Signature: ed25519.Sign(a.key, wire.AuthMessage(a.machineID, f.Challenge.Nonce))}
	if err := wsjson.Write(dctx, ws, &wire.Frame{Type: wire.FrameHello, Hello: hello}); err != nil {
		return fail(err)
	}
	f = wire.Frame{}
	if err := wsjson.Read(dctx, ws, &f); err != nil {
		return fail(err)
	}
	if f.Type != wire.FrameWelcome || f.Welcome == nil {
		return fail(fmt.Errorf("expected welcome, got %q (%v)", f.Type, f.Error))
	}
	return ws, f.Welcome.HeartbeatEvery(), nil
}

// idle heartbeats every hb and discards what the server sends until ctx
// ends.
func (a *simAgent) idle(ctx context.Context, ws *websocket.Conn, hb time.Duration, beats, errs *atomic.Int64) {
	defer ws.CloseNow()
	go func() {
		for {
			if _, _, err := ws.Read(ctx); err != nil {
				return
			}
		}
	}()
	t := time.NewTicker(hb)
	defer t.Stop()
	hbFrame, _ := json.Marshal(wire.Frame{Type: wire.FrameHeartbeat})
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := ws.Write(wctx, websocket.MessageText, hbFrame)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					errs.Add(1)
				}
				return
			}
			beats.Add(1)
		}
	}
}
