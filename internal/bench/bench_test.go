package bench_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/bench"
	"github.com/deskrun/deskrun/internal/cli"
)

// childEnv makes the test binary act as the deskrun binary, so the
// idle-agents scenario can run `deskrun server` as its own process
// without building it first.
const childEnv = "DESKRUN_BENCH_AS_DESKRUN"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := cli.Main(ctx, os.Args[1:], cli.Stdio())
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func deskrunCommand(t testing.TB) ([]string, []string) {
	exe, err := os.Executable()
	require.NoError(t, err)
	return []string{exe}, []string{childEnv + "=1"}
}

func TestSummarize(t *testing.T) {
	t.Parallel()
	ds := make([]time.Duration, 0, 1000)
	for i := 1000; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Microsecond)
	}
	p := bench.Summarize(ds)
	require.Equal(t, 1000, p.N)
	require.Equal(t, 500*time.Microsecond, p.P50)
	require.Equal(t, 990*time.Microsecond, p.P99)
	require.Equal(t, 999*time.Microsecond, p.P999)
	require.Equal(t, time.Microsecond, p.Min)
	require.Equal(t, 1000*time.Microsecond, p.Max)
	require.Equal(t, bench.Percentiles{}, bench.Summarize(nil))
}

// TestRoundTrip runs a few real round trips so the harness cannot rot.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd, env := deskrunCommand(t)
	r, err := bench.RoundTrip(ctx, bench.RoundTripOptions{N: 20, Warmup: 2, Command: cmd, Env: env, Data: t.TempDir()})
	require.NoError(t, err)
	for _, p := range []bench.Percentiles{r.Client, r.Server} {
		require.Equal(t, 20, p.N)
		require.Positive(t, p.Min)
		require.LessOrEqual(t, p.P50, p.P99)
		require.Less(t, p.Max, 10*time.Second)
	}
	// The server's part is inside what the client sees.
	require.Less(t, r.Server.Min, r.Client.Max)
	require.Positive(t, r.ServerCPU+r.AgentCPU, "two processes did the work")
}

// TestAgents connects a few simulated agents to a server process, twice:
// 10, then 20 on a fresh server, which runs with GOGC=50.
func TestAgents(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd, env := deskrunCommand(t)
	rs, err := bench.AgentsSeries(ctx, bench.AgentsOptions{Heartbeat: 100 * time.Millisecond, CPUWindow: time.Second, Steady: time.Second,
		Settle: 3 * time.Second, Command: cmd, Env: append(env, "GOGC=50"), Data: t.TempDir()}, []int{10, 20})
	require.NoError(t, err)
	require.Len(t, rs, 2)
	for i, n := range []int{10, 20} {
		r := rs[i]
		require.Equal(t, n, r.N)
		require.Equal(t, n, r.Connected, "deskrun_agents_connected")
		require.Positive(t, r.Before.RSS)
		require.Positive(t, r.After.PSS)
		require.Positive(t, r.Peak.RSS)
		require.GreaterOrEqual(t, r.CPUWindow, time.Second)
		require.GreaterOrEqual(t, r.ServerFileLimit, int64(n))
		// n agents × 10 beats/s × 1 s; a loaded CI machine drops ticks.
		require.Greater(t, r.Heartbeats, int64(n*10/4))
		// One goroutine per idle agent; the rest are the server's HTTP connections.
		require.InDelta(t, r.MemBefore.Goroutines+int64(n), r.MemAfter.Goroutines, 3)
		require.Equal(t, int64(50), r.MemAfter.GOGC, "the server runs with the environment it was given")
	}
}

// BenchmarkJobRoundTrip: POST a no-op job, GET it with ?wait= until it
// succeeded, through a real agent over TLS WebSocket. ns/op is the mean;
// the percentiles are reported as metrics.
func BenchmarkJobRoundTrip(b *testing.B) {
	ctx := context.Background()
	cmd, childEnv := deskrunCommand(b)
	env, err := bench.StartRoundTrip(ctx, bench.RoundTripOptions{Command: cmd, Env: childEnv, Data: b.TempDir(), SQLiteSync: os.Getenv("DESKRUN_BENCH_SQLITE_SYNC")})
	require.NoError(b, err)
	defer env.Close()
	for range 20 { // warm connections and the store's caches
		_, err := env.Once(ctx)
		require.NoError(b, err)
	}
	var cs, ss []time.Duration
	for b.Loop() {
		s, err := env.Once(ctx)
		if err != nil {
			b.Fatal(err)
		}
		cs, ss = append(cs, s.Client), append(ss, s.Server)
	}
	c, s := bench.Summarize(cs), bench.Summarize(ss)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	b.ReportMetric(us(c.P50), "p50-µs")
	b.ReportMetric(us(c.P99), "p99-µs")
	b.ReportMetric(us(c.P999), "p99.9-µs")
	b.ReportMetric(us(s.P50), "server-p50-µs")
	b.ReportMetric(us(s.P99), "server-p99-µs")
}

// TestRunStart runs three desktop-flow runs as a real SHA-512 user through
// a real server, agent, PAM stack and runas, so the run scenario's harness
// cannot rot. It needs root (useradd, PAM, setuid).
func TestRunStart(t *testing.T) {
	if err := bench.NeedRoot(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("the run scenario needs root, and CI runs as root")
		}
		t.Skip(err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r, err := bench.RunStart(ctx, bench.RunOptions{N: 3, Hashes: []string{bench.HashSHA512},
		Env: bench.DesktopEnvOptions{Data: t.TempDir()}})
	require.NoError(t, err)
	require.Len(t, r.Kinds, 1)
	s := r.Kinds[0].Stages
	for name, p := range map[string]bench.Percentiles{"total": s.Total, "queue": s.Queue, "push": s.Push, "logon": s.Logon, "spawn": s.Spawn, "date": s.Date} {
		require.Equal(t, 3, p.N, name)
		require.Positive(t, p.Min, name)
		require.Less(t, p.Max, 10*time.Second, name)
	}
	// The stamp comes from inside the run, after the logon and the spawn.
	require.Greater(t, s.Total.Min, s.Logon.Min)
	out, err := exec.Command("getent", "passwd").Output()
	require.NoError(t, err)
	require.NotContains(t, string(out), r.Kinds[0].User+":", "the bench user was not deleted")
}

// TestFlow runs three webhook deliveries of a cloud flow with one desktop
// step and three direct runs, as a real SHA-512 user, so the flow
// scenario's harness cannot rot. It needs root, like TestRunStart.
func TestFlow(t *testing.T) {
	if err := bench.NeedRoot(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("the flow scenario needs root, and CI runs as root")
		}
		t.Skip(err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r, err := bench.Flow(ctx, bench.FlowOptions{N: 3, Env: bench.DesktopEnvOptions{Data: t.TempDir()}})
	require.NoError(t, err)
	for name, p := range map[string]bench.Percentiles{"webhook": r.Webhook.Total, "direct": r.Direct.Total, "webhook logon": r.Webhook.Logon,
		"direct logon": r.Direct.Logon, "received": r.Layer.Received, "admit": r.Layer.Admit, "exec": r.Layer.Exec, "step": r.Layer.Step,
		"reply": r.Layer.Reply, "pairs": r.PairDiff} {
		require.Equal(t, 3, p.N, name)
		require.Less(t, p.Max, 10*time.Second, name)
	}
	for name, p := range map[string]bench.Percentiles{"received": r.Layer.Received, "step": r.Layer.Step} {
		require.Positive(t, p.Min, name)
	}
	// A run admitted at once is written running, with its first step, in
	// the delivery's commit: admission and the executor's start take
	// (next to) no time.
	for name, p := range map[string]bench.Percentiles{"admit": r.Layer.Admit, "exec": r.Layer.Exec} {
		require.GreaterOrEqual(t, p.Min, time.Duration(0), name)
	}
	// The flow layer comes before the desktop run, which comes before the stamp.
	require.Greater(t, r.Webhook.Total.Min, r.Webhook.API.Min)
	require.Greater(t, r.Webhook.API.Min, r.Layer.Received.Min)
	out, err := exec.Command("getent", "passwd").Output()
	require.NoError(t, err)
	require.NotContains(t, string(out), r.User+":", "the bench user was not deleted")
}

// TestNoopRuns ramps two closed-loop levels of durable no-op runs on two
// simulated machines: every run must go through the server's whole path
// (queue, placement, push, progress, result) and succeed.
func TestNoopRuns(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd, env := deskrunCommand(t)
	r, err := bench.NoopRuns(ctx, bench.NoopRunsOptions{Command: cmd, Env: env, Data: t.TempDir(), Machines: 2, Slots: 2,
		Concurrency: []int{1, 4}, Step: 500 * time.Millisecond})
	require.NoError(t, err)
	require.NotEmpty(t, r.Levels)
	for _, l := range r.Levels {
		require.Positive(t, l.Runs, "concurrency %d", l.Concurrency)
		require.Zero(t, l.Failed, "concurrency %d", l.Concurrency)
		require.Positive(t, l.RunsPerSec)
		// Every run was queued, assigned, reported logging on and ended.
		for name, p := range map[string]bench.Percentiles{"queue": l.Queue, "push": l.Push, "finish": l.Finish} {
			require.Equal(t, l.Runs, p.N, name)
			require.GreaterOrEqual(t, p.Min, time.Duration(0), name)
		}
		require.LessOrEqual(t, l.InServer.P50, l.Latency.Max)
	}
	require.Positive(t, r.Saturation.RunsPerSec)
}

// TestGrowth measures the round trip on an empty store and after seeding
// finished runs into it with the server stopped; the seeded history must
// be there when the server is back (the API counts it). As root it also
// measures run starts, like the full scenario.
func TestGrowth(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd, env := deskrunCommand(t)
	runN := 0
	if bench.NeedRoot() == nil {
		runN = 2
	}
	r, err := bench.Growth(ctx, bench.GrowthOptions{Sizes: []int{0, 1500}, N: 10, RunN: runN, Warmup: 1,
		Command: cmd, Env: env, Desktop: bench.DesktopEnvOptions{Data: t.TempDir()}})
	require.NoError(t, err)
	require.Len(t, r.Points, 2)
	require.Zero(t, r.Points[0].Seed)
	require.Positive(t, r.Points[1].Seed)
	require.Greater(t, r.Points[1].StoreBytes, r.Points[0].StoreBytes+1500*500, "1,500 runs and jobs of ≥ 500 bytes were written")
	for _, p := range r.Points {
		require.Equal(t, 10, p.RoundTrip.Server.N)
		if runN > 0 {
			require.NotNil(t, p.RunStart)
			require.Equal(t, runN, p.RunStart.NoHash.N)
		}
	}
}

// TestReportRows checks the report's judgement on figures built by hand:
// targets met or not, and each figure against the sum of its limits.
func TestReportRows(t *testing.T) {
	t.Parallel()
	p := func(p50 time.Duration) bench.Percentiles { return bench.Percentiles{N: 1, P50: p50, P99: 2 * p50} }
	rep := &bench.Report{
		Limits: &bench.LimitsResult{Cases: []bench.LimitCase{
			{Name: bench.LimitSQLiteFull, Latency: p(300 * time.Microsecond), PerSecond: 3000},
			{Name: bench.LimitSQLiteNormal, Latency: p(30 * time.Microsecond), PerSecond: 30000},
			{Name: bench.LimitWSRTT, Latency: p(40 * time.Microsecond)},
			{Name: bench.LimitSpawnSetuid, Skipped: "not root"},
		}},
		RoundTrip: &bench.RoundTripResult{SQLiteSync: "FULL", Server: p(1280 * time.Microsecond), Client: p(900 * time.Microsecond)},
		Noop:      &bench.NoopRunsResult{SQLiteSync: "NORMAL", Saturation: bench.NoopLevel{Concurrency: 32, RunsPerSec: 2500}, Met: true},
	}
	rows := map[string]bench.Row{}
	for _, r := range rep.Rows() {
		rows[r.Scenario+"|"+r.Figure] = r
	}
	rt := rows["1 roundtrip|server p50 (FULL)"]
	require.NotNil(t, rt.Met)
	require.False(t, *rt.Met, "1.28 ms misses ≤ 1 ms")
	// ws_rtt + 2 FULL commits = 0.64 ms; 1.28 ms is twice that.
	require.InDelta(t, 2.0, rt.Ratio, 1e-9)
	require.Contains(t, rt.Limit, "0.64 ms")
	cl := rows["1 roundtrip|client p50 / p99 / p99.9"]
	require.True(t, *cl.Met)
	noop := rows["2 noop runs|durable runs/s at saturation (32 concurrent, NORMAL)"]
	require.True(t, *noop.Met)
	// A rate: the limit (30,000 NORMAL commits/s) over the figure.
	require.InDelta(t, 12.0, noop.Ratio, 1e-9)
	var b bytes.Buffer
	require.NoError(t, rep.WriteTable(&b))
	require.Contains(t, b.String(), "2.0×")
	require.Contains(t, b.String(), "NO")
}
