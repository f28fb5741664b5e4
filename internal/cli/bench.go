package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun/internal/bench"
)

func newBenchCmd(a *app) *cobra.Command {
	var (
		scenario, sqliteSync, data string
		n, warmup                  int
		agents                     []int
		serverEnv                  []string
		heartbeat, cpuWindow       time.Duration
		steady                     time.Duration
		asJSON                     bool
		hashes                     []string
		users, slots, submitters   int
		profileDir                 string
		machines                   int
		concurrency                []int
		step                       time.Duration
		out                        string
		quick                      bool
		only                       []string
		sizes                      []int
	)
	c := &cobra.Command{
		Use:   "bench [--scenario all|limits|roundtrip|noop|run|burst|flow|growth|agents]",
		Short: "Measure deskrun on this machine against its limits (issue #9's suite; BENCHMARKS.md)",
		Long: `Measure deskrun on this machine: a real ` + "`deskrun server`" + ` and ` + "`deskrun agent`" + `
as their own processes, over real TLS sockets on 127.0.0.1, on a temporary data directory
(--data to choose its file system). BENCHMARKS.md has the numbers and the targets.

  all        (default) every scenario below, then one table: each figure, its target,
             and the figure as a multiple of the limit measured in the same run.
             --out FILE writes the whole report as JSON; --quick is CI's seconds-long size.
  limits     the parts the figures are made of, each alone: a SQLite 1-row commit
             (FULL, NORMAL), a TLS WebSocket push and answer, (root) fork/exec of
             /bin/true as root and as a user through setuid, a raw PAM logon (SHA-512,
             yescrypt).
  roundtrip  N no-op jobs, one at a time: client (POST /api/v1/jobs?wait=) and server
             (created_at → finished_at) latency, CPU per job of each process.
  noop       durable no-op desktop-flow runs/s: simulated agents whose executor does
             nothing, the server doing everything it does for a real run; closed-loop
             levels (--concurrency) until runs/s stops growing; stages and CPU per run.
  run        (root) N sequential runs per user (SHA-512 and yescrypt, drb_*, deleted
             after): trigger → the flow's first command as the user, with the stages.
  burst      (root) N runs at once across --users users on --slots slots: starts/s.
  flow       (root) signed webhook → desktop step's process, against direct runs.
  growth     the round trip and (root) the run start with 0, 100k and 1M finished runs
             in the store (--sizes), written into it between steps.
  agents     N simulated idle agents (--agents, a list): the server's memory per agent
             and heartbeat CPU.`,
		Args: cobra.NoArgs,
		// Hidden: a developer's tool, documented in BENCHMARKS.md rather
		// than in the help of every user.
		Hidden: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var progress = a.io.Err
			var res any
			switch scenario {
			case "all":
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				r, err := bench.Suite(ctx, bench.SuiteOptions{Executable: exe, Data: data, SQLiteSync: sqliteSync, Quick: quick,
					Only: only, ProfileDir: profileDir, Progress: progress})
				if err != nil {
					return err
				}
				res = r
				if out != "" {
					b, err := json.MarshalIndent(r, "", "  ")
					if err != nil {
						return err
					}
					if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
						return err
					}
				}
				if !asJSON {
					if err := r.WriteTable(a.io.Out); err != nil {
						return err
					}
					if out != "" {
						fmt.Fprintf(a.io.Out, "full results: %s\n", out)
					}
				}
			case "limits":
				if asJSON {
					progress = nil
				}
				if !cmd.Flags().Changed("n") {
					n = 200
				}
				if !cmd.Flags().Changed("warmup") {
					warmup = 5
				}
				r, err := bench.Limits(ctx, bench.LimitsOptions{N: n, Warmup: warmup, Data: data, Progress: progress})
				if err != nil {
					return err
				}
				res = r
				if !asJSON {
					printLimits(a.io.Out, r)
				}
			case "growth":
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				if !cmd.Flags().Changed("n") {
					n = 1000
				}
				if !cmd.Flags().Changed("warmup") {
					warmup = 20
				}
				r, err := bench.Growth(ctx, bench.GrowthOptions{Sizes: sizes, N: n, RunN: n / 10, Warmup: warmup,
					Desktop: bench.DesktopEnvOptions{Executable: exe, Data: data, SQLiteSync: sqliteSync, Progress: progress}})
				if err != nil {
					return err
				}
				res = r
				if !asJSON {
					if err := (&bench.Report{Growth: r}).WriteTable(a.io.Out); err != nil {
						return err
					}
				}
			case "roundtrip":
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				r, err := bench.RoundTrip(ctx, bench.RoundTripOptions{N: n, Warmup: warmup, Command: []string{exe}, Data: data, SQLiteSync: sqliteSync})
				if err != nil {
					return err
				}
				res = r
				if !asJSON {
					fmt.Fprintf(a.io.Out, "job round trip, sqlite %s\n  client: %s\n  server: %s\n  CPU per job: server %s, agent %s\n",
						r.SQLiteSync, r.Client, r.Server, r.ServerCPU, r.AgentCPU)
				}
			case "agents":
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				if asJSON {
					progress = nil
				}
				rs, err := bench.AgentsSeries(ctx, bench.AgentsOptions{Heartbeat: heartbeat, CPUWindow: cpuWindow, Steady: steady,
					Command: []string{exe}, Env: serverEnv, Data: data, Progress: progress}, agents)
				if err != nil {
					return err
				}
				res = rs
				if !asJSON {
					for _, r := range rs {
						printAgents(a.io.Out, r)
					}
				}
			case "noop":
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				if asJSON {
					progress = nil
				}
				r, err := bench.NoopRuns(ctx, bench.NoopRunsOptions{Command: []string{exe}, Data: data, SQLiteSync: sqliteSync,
					Machines: machines, Slots: slots, Concurrency: concurrency, Step: step, ProfileDir: profileDir, Progress: progress})
				if err != nil {
					return err
				}
				res = r
				if !asJSON {
					printNoop(a.io.Out, r)
				}
			case "run", "burst", "flow":
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				if asJSON {
					progress = nil
				}
				if !cmd.Flags().Changed("n") { // the flag's default is roundtrip's
					n = map[string]int{"run": 200, "burst": 1000, "flow": 200}[scenario]
				}
				if !cmd.Flags().Changed("warmup") {
					warmup = 5
				}
				env := bench.DesktopEnvOptions{Executable: exe, Data: data, SQLiteSync: sqliteSync, ProfileDir: profileDir, Progress: progress}
				switch scenario {
				case "flow":
					r, err := bench.Flow(ctx, bench.FlowOptions{N: n, Warmup: warmup, Env: env})
					if err != nil {
						return err
					}
					res = r
					if !asJSON {
						printFlow(a.io.Out, r)
					}
				case "run":
					r, err := bench.RunStart(ctx, bench.RunOptions{N: n, Warmup: warmup, Hashes: hashes, Env: env})
					if err != nil {
						return err
					}
					res = r
					if !asJSON {
						printRunStart(a.io.Out, r)
					}
				default:
					r, err := bench.Burst(ctx, bench.BurstOptions{N: n, Users: users, Slots: slots, Submitters: submitters, Env: env})
					if err != nil {
						return err
					}
					res = r
					if !asJSON {
						printBurst(a.io.Out, r, profileDir)
					}
				}
			default:
				return usagef("--scenario must be all, limits, roundtrip, noop, run, burst, flow, growth or agents, not %q", scenario)
			}
			if asJSON {
				return printJSON(a.io.Out, map[string]any{"scenario": scenario, "result": res})
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&scenario, "scenario", "all", "all, limits, roundtrip, noop, run, burst, flow, growth or agents")
	f.IntVar(&n, "n", 2000, "roundtrip: measured round trips; run: runs per user (default 200); burst: runs (default 1000); flow: webhook and direct runs each (default 200); growth: round trips per size, and a tenth as many run starts (default 1000); limits: iterations per case (default 200)")
	f.IntVar(&warmup, "warmup", 100, "roundtrip: unmeasured round trips first; run, flow: unmeasured runs per user / of each kind (default 5); growth: per size (default 20); limits: per case (default 5)")
	f.StringVar(&sqliteSync, "sqlite-sync", "FULL", "all, roundtrip, noop, run, burst, flow, growth: SQLite synchronous mode, FULL or NORMAL")
	f.StringSliceVar(&hashes, "hashes", []string{bench.HashSHA512, bench.HashYescrypt}, "run: one user per password hash (sha512, yescrypt)")
	f.IntVar(&users, "users", 8, "burst: SHA-512 users, one connection each")
	f.IntVar(&slots, "slots", 8, "burst: the machine's slots; noop: each simulated machine's")
	f.IntVar(&submitters, "submitters", 32, "burst: concurrent API clients submitting")
	f.IntVar(&machines, "machines", 32, "noop: simulated machines (each with --slots slots)")
	f.IntSliceVar(&concurrency, "concurrency", []int{8, 32, 128, 512}, "noop: closed-loop levels (concurrent clients), ramped until runs/s stops growing")
	f.DurationVar(&step, "step", 5*time.Second, "noop: how long each level runs")
	f.StringVar(&profileDir, "profile-dir", "", "all, noop, run, burst, flow: write CPU profiles of the server and agent processes here (server.pprof, agent.pprof)")
	f.IntSliceVar(&agents, "agents", []int{2000}, "agents: simulated agents; a list (1000,5000,10000) measures each count with a fresh server")
	f.StringArrayVar(&serverEnv, "server-env", nil, "agents: NAME=VALUE added to the server's environment (GOGC, GOMEMLIMIT), repeatable")
	f.DurationVar(&heartbeat, "heartbeat", time.Second, "agents: heartbeat interval")
	f.DurationVar(&cpuWindow, "cpu-window", 10*time.Second, "agents: how long server CPU is sampled")
	f.DurationVar(&steady, "steady", 3*time.Minute, "agents: how long the sampling may go on for the server to complete two GC cycles (peak memory)")
	f.IntSliceVar(&sizes, "sizes", []int{0, 100_000, 1_000_000}, "growth: finished runs in the store at each step")
	f.StringVar(&out, "out", "", "all: also write the whole report as JSON to this file")
	f.BoolVar(&quick, "quick", false, "all: every scenario at a size that takes seconds (CI; the figures mean little)")
	f.StringSliceVar(&only, "only", nil, "all: run only these scenarios (limits, roundtrip, noop, run, burst, flow, growth, agents)")
	f.StringVar(&data, "data", "", "server data directory, or limits' SQLite files (default: a temporary one, removed after)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func printAgents(w io.Writer, r *bench.AgentsResult) {
	fmt.Fprintf(w, "%d idle agents (%d connected), heartbeat %s, connected in %s\n", r.N, r.Connected, r.Heartbeat, r.Connect.Round(time.Millisecond))
	fmt.Fprintf(w, "  server memory per agent: RSS %d B, PSS %d B (Go heap %d B, stacks %d B, next GC %d B)\n",
		r.PerAgentRSS, r.PerAgentPSS, r.PerAgentHeap, r.PerAgentStack, r.PerAgentNextGC)
	fmt.Fprintf(w, "  peak over %d GC cycles: RSS %d B, PSS %d B per agent\n", r.GCCycles, r.PerAgentPeakRSS, r.PerAgentPeakPSS)
	fmt.Fprintf(w, "  heartbeat CPU: %.2f%% of a core (%d beats in %s, %s each); %.3f%% per 1,000 agents at 10 s\n",
		r.CPUPercent, r.Heartbeats, r.CPUWindow, r.CPUPerHeartbeat, r.CPUPercentPer1000At10s)
}

func printStages(w io.Writer, s bench.Stages) {
	row := func(name string, p bench.Percentiles) {
		if p.N == 0 {
			return
		}
		fmt.Fprintf(w, "    %-8s %s\n", name, p)
	}
	row("total", s.Total)
	row("api", s.API)
	row("queue", s.Queue)
	row("push", s.Push)
	row("logon", s.Logon)
	row("session", s.Session)
	row("display", s.Display)
	row("spawn", s.Spawn)
	row("exec", s.Exec)
	row("no-hash", s.NoHash)
	row("date", s.Date)
}

func printRunStart(w io.Writer, r *bench.RunResult) {
	fmt.Fprintf(w, "desktop-flow run: trigger → process started, sqlite %s\n", r.SQLiteSync)
	for _, k := range r.Kinds {
		fmt.Fprintf(w, "  %s (%s): without logon p50 %s (target ≤ %s: %s), p99 %s (target ≤ %s: %s)\n", k.Hash, k.User,
			k.Stages.NoHash.P50.Round(10*time.Microsecond), bench.TargetNoHashP50, metOrNot(k.MetP50),
			k.Stages.NoHash.P99.Round(10*time.Microsecond), bench.TargetNoHashP99, metOrNot(k.MetP99))
		printStages(w, k.Stages)
	}
}

func printBurst(w io.Writer, r *bench.BurstResult, profile string) {
	fmt.Fprintf(w, "burst: %d runs, %d SHA-512 users, %d slots, %d submitters\n", r.N, r.Users, r.Slots, r.Submitters)
	fmt.Fprintf(w, "  submitted in %s (%.0f/s); first start %s, last start %s: %.0f starts/s (target ≥ %.0f: %s); last finish %s\n",
		r.Submitted.Round(time.Millisecond), r.SubmitPerSec, r.FirstStart.Round(time.Millisecond), r.LastStart.Round(time.Millisecond),
		r.StartsPerSec, bench.TargetStartsPS, metOrNot(r.Met), r.LastFinish.Round(time.Millisecond))
	fmt.Fprintf(w, "  CPU over %s: server %s, agent %s, the runs' processes %s, API clients %s; machine %.0f%% busy (%d cores)\n",
		r.Wall.Round(time.Millisecond), r.ServerCPU.Round(time.Millisecond), r.AgentCPU.Round(time.Millisecond),
		r.RunsCPU.Round(time.Millisecond), r.BenchCPU.Round(time.Millisecond), r.MachineBusy, r.Cores)
	fmt.Fprintln(w, "  per run, under load:")
	printStages(w, r.Stages)
	if profile != "" {
		fmt.Fprintf(w, "  CPU profiles: go tool pprof -top %s/server.pprof (and agent.pprof)\n", profile)
	}
}

func printNoop(w io.Writer, r *bench.NoopRunsResult) {
	fmt.Fprintf(w, "durable no-op runs: %d simulated machines × %d slots, sqlite %s\n", r.Machines, r.Slots, r.SQLiteSync)
	for _, l := range r.Levels {
		fmt.Fprintf(w, "  %4d concurrent: %6.0f runs/s (%d runs, %d failed); server CPU %s/run, bench %s/run; %.2f commits/run, %.1f transactions/commit\n",
			l.Concurrency, l.RunsPerSec, l.Runs, l.Failed, l.ServerCPU.Round(time.Microsecond), l.BenchCPU.Round(time.Microsecond), l.CommitsPerRun, l.TxPerCommit)
	}
	s := r.Saturation
	fmt.Fprintf(w, "  saturation: %.0f runs/s at %d concurrent (target ≥ %.0f: %s)\n", s.RunsPerSec, s.Concurrency, bench.TargetNoopRunsPS, metOrNot(r.Met))
	for _, row := range []struct {
		name string
		p    bench.Percentiles
	}{{"latency", s.Latency}, {"queue", s.Queue}, {"push", s.Push}, {"finish", s.Finish}, {"in-server", s.InServer}} {
		fmt.Fprintf(w, "    %-9s %s\n", row.name, row.p)
	}
}

func printFlow(w io.Writer, r *bench.FlowResult) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
	fmt.Fprintf(w, "cloud flow: webhook → desktop process started, vs a direct run; sqlite %s, user %s\n", r.SQLiteSync, r.User)
	fmt.Fprintf(w, "  webhook → start p50 %s p99 %s; direct → start p50 %s p99 %s\n",
		ms(r.Webhook.Total.P50), ms(r.Webhook.Total.P99), ms(r.Direct.Total.P50), ms(r.Direct.Total.P99))
	fmt.Fprintf(w, "  cloud-flow layer, p50: %s on the totals (target ≤ %s: %s), %s up to the desktop run's creation\n",
		ms(r.Overhead), bench.TargetFlowOverheadP50, metOrNot(r.Met), ms(r.LayerOverhead))
	fmt.Fprintf(w, "  per pair, webhook − direct: %s\n", r.PairDiff)
	fmt.Fprintln(w, "  webhook:")
	printStages(w, r.Webhook)
	fmt.Fprintln(w, "  flow layer (webhook → desktop run created):")
	for _, row := range []struct {
		name string
		p    bench.Percentiles
	}{{"received", r.Layer.Received}, {"admit", r.Layer.Admit}, {"exec", r.Layer.Exec}, {"step", r.Layer.Step}, {"reply", r.Layer.Reply}} {
		fmt.Fprintf(w, "    %-8s %s\n", row.name, row.p)
	}
	fmt.Fprintln(w, "  direct:")
	printStages(w, r.Direct)
}

func metOrNot(b bool) string {
	if b {
		return "met"
	}
	return "NOT met"
}

func printLimits(w io.Writer, r *bench.LimitsResult) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond)) }
	fmt.Fprintf(w, "limits of this machine, %d per case (loadavg %s)\n", r.N, r.LoadAvg)
	for _, c := range r.Cases {
		if c.Skipped != "" {
			fmt.Fprintf(w, "  %-20s skipped: %s\n", c.Name, c.Skipped)
			continue
		}
		fmt.Fprintf(w, "  %-20s %s; %.0f/s in a row\n", c.Name, c.Latency, c.PerSecond)
	}
	if p := r.Spawn; p != nil {
		fmt.Fprintf(w, "  spawn_setuid ran as %s: uid gid groups of a child = %s\n", p.User, p.Child)
	}
	fmt.Fprintln(w, "product figures and the sum of their limits' p50, sqlite FULL / NORMAL:")
	for _, c := range bench.Comparisons {
		terms := make([]string, 0, len(c.Limit))
		for _, t := range c.Limit {
			terms = append(terms, fmt.Sprintf("%d × %s", t.Count, t.Case))
		}
		full, err := r.Limit(c, "FULL")
		normal, _ := r.Limit(c, "NORMAL")
		sum := ms(full) + " / " + ms(normal)
		if err != nil {
			sum = err.Error()
		}
		fmt.Fprintf(w, "  %-9s %-26s ≥ %s = %s\n", c.Scenario, c.Figure, strings.Join(terms, " + "), sum)
	}
}
