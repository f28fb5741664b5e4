package cli

import (
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
		n, warmup, agents          int
		heartbeat, cpuWindow       time.Duration
		asJSON                     bool
		hashes                     []string
		users, slots, submitters   int
		cpuProfile                 string
	)
	c := &cobra.Command{
		Use:   "bench --scenario roundtrip|agents|run|burst|flow|limits",
		Short: "Measure job latency, idle-agent cost and desktop-flow run starts on this machine (loopback)",
		Long: `Measure deskrun on this machine, over real loopback sockets. BENCHMARKS.md has the
numbers and how they were taken.

  roundtrip  starts a server and a real agent in this process and times N no-op jobs:
             POST /api/v1/jobs, then GET /api/v1/jobs/{id}?wait= until it succeeded
             (client side), and the job's created_at → finished_at (server side).
  agents     starts ` + "`deskrun server`" + ` as its own process, enrolls and connects N
             simulated agents over TLS WebSockets (real handshake), lets them idle with
             heartbeats, and reports the server's RSS/PSS per agent and heartbeat CPU.
  run        (root) creates local users with SHA-512 and yescrypt passwords (drb_*, deleted
             after), a private PAM stack, a server and a real agent in this process, and
             times N sequential desktop-flow runs per user: the API trigger → the flow's
             first command as the user, with the stages (queue, push, logon, session,
             spawn) from the run's timestamps and the agent's timings.
  burst      (root) submits N runs at once across --users SHA-512 users to one machine
             with --slots slots and reports starts per second (--cpuprofile for a profile).
  flow       (root) one SHA-512 user; applies a cloud flow with a webhook trigger and one
             desktop step, then alternates N signed POST /hooks/{id} deliveries with N
             direct runs of the same desktop flow and reports webhook → process start
             against trigger → process start, and what the flow layer adds.
  limits     the parts the figures above are made of, each alone, N times: a SQLite
             1-row commit (the store's DSN, synchronous FULL and NORMAL, in --data),
             a TLS WebSocket push and ack on 127.0.0.1, and as root fork/exec of
             /bin/true (as root and as a user through setuid) and a raw PAM logon
             (SHA-512 and yescrypt users, drb_*, deleted after); then which product
             figure is compared to which sum of limits.`,
		Args: cobra.NoArgs,
		// Hidden: a developer's tool, documented in BENCHMARKS.md rather
		// than in the help of every user.
		Hidden: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var progress = a.io.Err
			var res any
			switch scenario {
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
			case "roundtrip":
				r, err := bench.RoundTrip(ctx, bench.RoundTripOptions{N: n, Warmup: warmup, Data: data, SQLiteSync: sqliteSync})
				if err != nil {
					return err
				}
				res = r
				if !asJSON {
					fmt.Fprintf(a.io.Out, "job round trip, sqlite %s\n  client: %s\n  POST:   %s\n  server: %s\n", r.SQLiteSync, r.Client, r.Create, r.Server)
				}
			case "agents":
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				if asJSON {
					progress = nil
				}
				r, err := bench.Agents(ctx, bench.AgentsOptions{N: agents, Heartbeat: heartbeat, CPUWindow: cpuWindow,
					Command: []string{exe}, Data: data, Progress: progress})
				if err != nil {
					return err
				}
				res = r
				if !asJSON {
					fmt.Fprintf(a.io.Out, "%d idle agents (%d connected), heartbeat %s\n", r.N, r.Connected, r.Heartbeat)
					fmt.Fprintf(a.io.Out, "  server memory per agent: RSS %d B, PSS %d B (Go heap %d B, stacks %d B)\n",
						r.PerAgentRSS, r.PerAgentPSS, r.PerAgentHeap, r.PerAgentStack)
					fmt.Fprintf(a.io.Out, "  heartbeat CPU: %.2f%% of a core (%d beats in %s, %s each); %.3f%% per 1,000 agents at 10 s\n",
						r.CPUPercent, r.Heartbeats, r.CPUWindow, r.CPUPerHeartbeat, r.CPUPercentPer1000At10s)
				}
			case "run", "burst", "flow":
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				if asJSON {
					progress = nil
				}
				if n == 2000 && !cmd.Flags().Changed("n") { // roundtrip's default
					n = map[string]int{"run": 200, "burst": 1000, "flow": 200}[scenario]
				}
				if !cmd.Flags().Changed("warmup") {
					warmup = 5
				}
				env := bench.DesktopEnvOptions{Executable: exe, Data: data, SQLiteSync: sqliteSync, Progress: progress}
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
					r, err := bench.Burst(ctx, bench.BurstOptions{N: n, Users: users, Slots: slots, Submitters: submitters, CPUProfile: cpuProfile, Env: env})
					if err != nil {
						return err
					}
					res = r
					if !asJSON {
						printBurst(a.io.Out, r, cpuProfile)
					}
				}
			default:
				return usagef("--scenario must be roundtrip, agents, run, burst, flow or limits, not %q", scenario)
			}
			if asJSON {
				return printJSON(a.io.Out, map[string]any{"scenario": scenario, "result": res})
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&scenario, "scenario", "roundtrip", "roundtrip, agents, run, burst, flow or limits")
	f.IntVar(&n, "n", 2000, "roundtrip: measured round trips; run: runs per user (default 200); burst: runs (default 1000); flow: webhook and direct runs each (default 200); limits: iterations per case (default 200)")
	f.IntVar(&warmup, "warmup", 100, "roundtrip: unmeasured round trips first; run, flow: unmeasured runs per user / of each kind (default 5); limits: per case (default 5)")
	f.StringVar(&sqliteSync, "sqlite-sync", "FULL", "roundtrip, run, burst, flow: SQLite synchronous mode, FULL or NORMAL")
	f.StringSliceVar(&hashes, "hashes", []string{bench.HashSHA512, bench.HashYescrypt}, "run: one user per password hash (sha512, yescrypt)")
	f.IntVar(&users, "users", 8, "burst: SHA-512 users, one connection each")
	f.IntVar(&slots, "slots", 8, "burst: the machine's slots")
	f.IntVar(&submitters, "submitters", 32, "burst: concurrent API clients submitting")
	f.StringVar(&cpuProfile, "cpuprofile", "", "burst: write a CPU profile of the process (server + agent) to this file")
	f.IntVar(&agents, "agents", 2000, "agents: simulated agents")
	f.DurationVar(&heartbeat, "heartbeat", time.Second, "agents: heartbeat interval")
	f.DurationVar(&cpuWindow, "cpu-window", 10*time.Second, "agents: how long server CPU is sampled")
	f.StringVar(&data, "data", "", "server data directory, or limits' SQLite files (default: a temporary one, removed after)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return c
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
	fmt.Fprintf(w, "  CPU over %s: this process %s, children %s; machine %.0f%% busy (%d cores)\n",
		r.Wall.Round(time.Millisecond), r.ProcessCPU.Round(time.Millisecond), r.ChildrenCPU.Round(time.Millisecond), r.MachineBusy, r.Cores)
	fmt.Fprintln(w, "  per run, under load:")
	printStages(w, r.Stages)
	if profile != "" {
		fmt.Fprintf(w, "  CPU profile: go tool pprof -top %s\n", profile)
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
