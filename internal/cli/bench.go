package cli

import (
	"fmt"
	"os"
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
	)
	c := &cobra.Command{
		Use:   "bench --scenario roundtrip|agents",
		Short: "Measure job latency and idle-agent cost on this machine (loopback)",
		Long: `Measure deskrun on this machine, over real loopback sockets. BENCHMARKS.md has the
numbers and how they were taken.

  roundtrip  starts a server and a real agent in this process and times N no-op jobs:
             POST /api/v1/jobs, then GET /api/v1/jobs/{id}?wait= until it succeeded
             (client side), and the job's created_at → finished_at (server side).
  agents     starts ` + "`deskrun server`" + ` as its own process, enrolls and connects N
             simulated agents over TLS WebSockets (real handshake), lets them idle with
             heartbeats, and reports the server's RSS/PSS per agent and heartbeat CPU.`,
		Args: cobra.NoArgs,
		// Hidden: a developer's tool, documented in BENCHMARKS.md rather
		// than in the help of every user.
		Hidden: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var progress = a.io.Err
			var res any
			switch scenario {
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
			default:
				return usagef("--scenario must be roundtrip or agents, not %q", scenario)
			}
			if asJSON {
				return printJSON(a.io.Out, map[string]any{"scenario": scenario, "result": res})
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&scenario, "scenario", "roundtrip", "roundtrip or agents")
	f.IntVar(&n, "n", 2000, "roundtrip: measured round trips")
	f.IntVar(&warmup, "warmup", 100, "roundtrip: unmeasured round trips first")
	f.StringVar(&sqliteSync, "sqlite-sync", "FULL", "roundtrip: SQLite synchronous mode, FULL or NORMAL")
	f.IntVar(&agents, "agents", 2000, "agents: simulated agents")
	f.DurationVar(&heartbeat, "heartbeat", time.Second, "agents: heartbeat interval")
	f.DurationVar(&cpuWindow, "cpu-window", 10*time.Second, "agents: how long server CPU is sampled")
	f.StringVar(&data, "data", "", "server data directory (default: a temporary one, removed after)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return c
}
