package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// SuiteOptions configure the whole suite: every scenario, one report.
type SuiteOptions struct {
	// Executable is the deskrun binary every server and agent process
	// runs; empty means build one.
	Executable string
	// Data is where the scenarios keep their data (one directory each);
	// empty means a temporary directory. Its file system decides what an
	// fsync costs.
	Data string
	// SQLiteSync is FULL (the default) or NORMAL, for every scenario.
	SQLiteSync string
	// Quick runs every scenario at a size that takes seconds, not
	// minutes: CI runs it so that the suite cannot rot. Its figures mean
	// little.
	Quick bool
	// Only, if set, names the scenarios to run (limits, roundtrip, noop,
	// run, burst, agents, growth, flow); the rest are skipped.
	Only []string
	// ProfileDir, if set, keeps CPU profiles of the server and agent
	// processes, one subdirectory per scenario.
	ProfileDir string
	Progress   io.Writer
}

// Report is the suite's result: the machine, each scenario's full result,
// and the table of figures against their targets and limits.
type Report struct {
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
	Host     Host          `json:"host"`
	Quick    bool          `json:"quick"`

	Limits    *LimitsResult    `json:"limits,omitempty"`
	RoundTrip *RoundTripResult `json:"roundtrip,omitempty"`
	Noop      *NoopRunsResult  `json:"noop,omitempty"`
	Run       *RunResult       `json:"run,omitempty"`
	Burst     *BurstResult     `json:"burst,omitempty"`
	Agents    []*AgentsResult  `json:"agents,omitempty"`
	Growth    *GrowthResult    `json:"growth,omitempty"`
	Flow      *FlowResult      `json:"flow,omitempty"`

	// Errors holds the scenarios that failed (or were skipped, and why):
	// one failure does not lose the others' figures.
	Errors map[string]string `json:"errors,omitempty"`
	Table  []Row             `json:"table"`
}

// Host describes the machine the report was measured on.
type Host struct {
	Cores     int    `json:"cores"`
	CPU       string `json:"cpu"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	Root      bool   `json:"root"`
	LoadAvg   string `json:"loadavg_at_start"`
}

// Row is one figure of the report: what it is, its value, the issue's
// target and whether it is met, and the figure as a multiple of the
// machine's limit for it.
type Row struct {
	Scenario string  `json:"scenario"`
	Figure   string  `json:"figure"`
	Value    string  `json:"value"`
	Target   string  `json:"target,omitempty"`
	Met      *bool   `json:"met,omitempty"`
	Limit    string  `json:"limit,omitempty"`
	Ratio    float64 `json:"ratio,omitempty"` // value ÷ limit (a time), or limit ÷ value (a rate): ≥ 1, lower is closer
}

// scenarios in the order the suite runs them: limits first, so each
// figure is compared with limits measured on the same machine minutes
// before; the idle agents last but one (their 10k sockets take a while
// to drain).
var scenarios = []string{"limits", "roundtrip", "noop", "run", "burst", "flow", "growth", "agents"}

// Suite runs every scenario and builds the report. A scenario that fails
// is recorded in Errors and the suite goes on.
func Suite(ctx context.Context, o SuiteOptions) (*Report, error) {
	rep := &Report{Started: time.Now(), Host: host(), Quick: o.Quick, Errors: map[string]string{}}
	progress := func(format string, a ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", a...)
		}
	}
	base := o.Data
	if base == "" {
		tmp, err := os.MkdirTemp("", "deskrun-bench-suite-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		base = tmp
	}
	if err := os.Chmod(base, 0o711); err != nil {
		return nil, err
	}
	exe := o.Executable
	if exe == "" {
		var err error
		if exe, err = buildDeskrun(ctx, base); err != nil {
			return nil, err
		}
	}
	cmd := []string{exe}
	want := func(name string) bool {
		if len(o.Only) == 0 {
			return true
		}
		for _, s := range o.Only {
			if s == name {
				return true
			}
		}
		return false
	}
	dir := func(name string) string {
		d := filepath.Join(base, name)
		_ = os.MkdirAll(d, 0o711)
		return d
	}
	profile := func(name string) string {
		if o.ProfileDir == "" {
			return ""
		}
		d := filepath.Join(o.ProfileDir, name)
		_ = os.MkdirAll(d, 0o755)
		return d
	}
	desk := func(name string) DesktopEnvOptions {
		return DesktopEnvOptions{Executable: exe, Data: dir(name), SQLiteSync: o.SQLiteSync, ProfileDir: profile(name), Progress: o.Progress}
	}
	sz := func(full, quick int) int {
		if o.Quick {
			return quick
		}
		return full
	}
	root := NeedRoot() == nil
	for _, name := range scenarios {
		if !want(name) {
			continue
		}
		if !root && (name == "run" || name == "burst" || name == "flow") {
			rep.Errors[name] = "skipped: " + NeedRoot().Error()
			continue
		}
		progress("== %s", name)
		t0 := time.Now()
		var err error
		switch name {
		case "limits":
			rep.Limits, err = Limits(ctx, LimitsOptions{N: sz(200, 10), Warmup: sz(10, 2), Data: dir(name), Progress: o.Progress})
		case "roundtrip":
			rep.RoundTrip, err = RoundTrip(ctx, RoundTripOptions{N: sz(3000, 50), Warmup: sz(100, 5), Command: cmd, Data: dir(name), SQLiteSync: o.SQLiteSync})
		case "noop":
			levels := []int{8, 32, 128, 512}
			step := 5 * time.Second
			if o.Quick {
				levels, step = []int{2, 8}, 500*time.Millisecond
			}
			rep.Noop, err = NoopRuns(ctx, NoopRunsOptions{Command: cmd, Data: dir(name), SQLiteSync: o.SQLiteSync,
				Machines: sz(32, 2), Slots: sz(8, 4), Concurrency: levels, Step: step, ProfileDir: profile(name), Progress: o.Progress})
		case "run":
			rep.Run, err = RunStart(ctx, RunOptions{N: sz(200, 3), Warmup: sz(5, 1), Hashes: []string{HashSHA512, HashYescrypt}, Env: desk(name)})
		case "burst":
			rep.Burst, err = Burst(ctx, BurstOptions{N: sz(1000, 16), Users: sz(8, 2), Slots: sz(8, 2), Submitters: sz(32, 4), Env: desk(name)})
		case "flow":
			rep.Flow, err = Flow(ctx, FlowOptions{N: sz(200, 3), Warmup: sz(5, 1), Env: desk(name)})
		case "growth":
			sizes := []int{0, 100_000, 1_000_000}
			if o.Quick {
				sizes = []int{0, 2_000}
			}
			rep.Growth, err = Growth(ctx, GrowthOptions{Sizes: sizes, N: sz(1000, 20), RunN: sz(100, 2), Warmup: sz(20, 2),
				Command: cmd, Desktop: desk(name)})
		case "agents":
			ao := AgentsOptions{Heartbeat: time.Second, CPUWindow: time.Duration(sz(10, 1)) * time.Second,
				Steady: time.Duration(sz(180, 0)) * time.Second, Settle: time.Duration(sz(30, 3)) * time.Second,
				Command: cmd, Data: dir(name), Progress: o.Progress}
			rep.Agents, err = AgentsSeries(ctx, ao, []int{sz(1000, 10), sz(5000, 20), sz(10000, 40)})
			if err == nil {
				// The same with a soft memory limit, the knob for a large
				// fleet (BENCHMARKS.md): the GC's headroom is bounded.
				ao.Env = []string{"GOMEMLIMIT=" + fmt.Sprint(sz(256, 64)) + "MiB"}
				ao.Data = filepath.Join(dir(name), "gomemlimit")
				var rs []*AgentsResult
				rs, err = AgentsSeries(ctx, ao, []int{sz(10000, 40)})
				rep.Agents = append(rep.Agents, rs...)
			}
		}
		if err != nil {
			rep.Errors[name] = err.Error()
			progress("%s failed: %v", name, err)
		} else {
			progress("%s done in %s", name, time.Since(t0).Round(time.Second))
		}
	}
	rep.Duration = time.Since(rep.Started)
	rep.Table = rep.Rows()
	if len(rep.Errors) == 0 {
		rep.Errors = nil
	}
	return rep, nil
}

// buildDeskrun builds the deskrun binary into dir (the suite was started
// from a test or `go run`, not from an installed binary).
func buildDeskrun(ctx context.Context, dir string) (string, error) {
	exe := filepath.Join(dir, "deskrun")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", exe, "github.com/deskrun/deskrun/cmd/deskrun").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build deskrun: %v\n%s", err, out)
	}
	return exe, nil
}

func host() Host {
	h := Host{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), Root: os.Geteuid() == 0}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		h.LoadAvg = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				h.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return h
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func ptr(b bool) *bool { return &b }

// Rows turns the results into the report's table.
func (r *Report) Rows() []Row {
	var rows []Row
	sync := func(s string) string {
		if s == "" {
			return "FULL"
		}
		return s
	}
	// against finds the limit of a Comparisons figure.
	against := func(scenario, figure, sqliteSync string, value time.Duration) (string, float64) {
		if r.Limits == nil {
			return "", 0
		}
		for _, c := range Comparisons {
			if c.Scenario != scenario || c.Figure != figure {
				continue
			}
			l, err := r.Limits.Limit(c, sqliteSync)
			if err != nil {
				return "", 0
			}
			var terms []string
			for _, t := range c.Limit {
				name := t.Case
				if t.Count > 1 {
					name = fmt.Sprintf("%d×%s", t.Count, name)
				}
				terms = append(terms, name)
			}
			return fmt.Sprintf("%s (%s)", ms(l), strings.Join(terms, " + ")), Ratio(value, l)
		}
		return "", 0
	}
	limitCase := func(name string) (LimitCase, bool) {
		if r.Limits == nil {
			return LimitCase{}, false
		}
		c, ok := r.Limits.Case(name)
		return c, ok && c.Skipped == ""
	}
	if r.Limits != nil {
		for _, c := range r.Limits.Cases {
			v := "skipped: " + c.Skipped
			if c.Skipped == "" {
				v = fmt.Sprintf("p50 %s, p99 %s", ms(c.Latency.P50), ms(c.Latency.P99))
				if c.PerSecond > 0 {
					v += fmt.Sprintf(", %.0f/s", c.PerSecond)
				}
			}
			rows = append(rows, Row{Scenario: "limits", Figure: c.Name, Value: v})
		}
	}
	if rt := r.RoundTrip; rt != nil {
		l, ratio := against("roundtrip", "server p50", rt.SQLiteSync, rt.Server.P50)
		rows = append(rows,
			Row{Scenario: "1 roundtrip", Figure: "server p50 (" + sync(rt.SQLiteSync) + ")", Value: ms(rt.Server.P50), Target: "≤ 1 ms",
				Met: ptr(rt.Server.P50 <= time.Millisecond), Limit: l, Ratio: ratio},
			Row{Scenario: "1 roundtrip", Figure: "client p50 / p99 / p99.9", Value: ms(rt.Client.P50) + " / " + ms(rt.Client.P99) + " / " + ms(rt.Client.P999),
				Target: "p50 ≤ 1 ms", Met: ptr(rt.Client.P50 <= time.Millisecond)},
			Row{Scenario: "1 roundtrip", Figure: "CPU per job: server / agent", Value: ms(rt.ServerCPU) + " / " + ms(rt.AgentCPU)})
	}
	if n := r.Noop; n != nil {
		s := n.Saturation
		row := Row{Scenario: "2 noop runs", Figure: fmt.Sprintf("durable runs/s at saturation (%d concurrent, %s)", s.Concurrency, sync(n.SQLiteSync)),
			Value: fmt.Sprintf("%.0f/s", s.RunsPerSec), Target: fmt.Sprintf("≥ %.0f/s", TargetNoopRunsPS), Met: ptr(n.Met)}
		name := LimitSQLiteFull
		if strings.EqualFold(n.SQLiteSync, "NORMAL") {
			name = LimitSQLiteNormal
		}
		if c, ok := limitCase(name); ok && c.PerSecond > 0 && s.RunsPerSec > 0 {
			row.Limit = fmt.Sprintf("%.0f commits/s (%s, one writer)", c.PerSecond, name)
			row.Ratio = c.PerSecond / s.RunsPerSec
		}
		rows = append(rows, row,
			Row{Scenario: "2 noop runs", Figure: "CPU per run: server / bench (clients + simulated agents)", Value: ms(s.ServerCPU) + " / " + ms(s.BenchCPU)},
			Row{Scenario: "2 noop runs", Figure: "in server p50: queue / push / finish", Value: ms(s.Queue.P50) + " / " + ms(s.Push.P50) + " / " + ms(s.Finish.P50)})
	}
	if rs := r.Run; rs != nil {
		for _, k := range rs.Kinds {
			st := k.Stages
			l, ratio := against("run", k.Hash+" without logon p50", rs.SQLiteSync, st.NoHash.P50)
			rows = append(rows,
				Row{Scenario: "3 run start", Figure: k.Hash + ": trigger → start without logon, p50", Value: ms(st.NoHash.P50), Target: "≤ 5 ms", Met: ptr(k.MetP50), Limit: l, Ratio: ratio},
				Row{Scenario: "3 run start", Figure: k.Hash + ": without logon, p99", Value: ms(st.NoHash.P99), Target: "≤ 20 ms", Met: ptr(k.MetP99)},
				Row{Scenario: "3 run start", Figure: k.Hash + ": total p50 / p99", Value: ms(st.Total.P50) + " / " + ms(st.Total.P99)},
				Row{Scenario: "3 run start", Figure: k.Hash + ": api / queue / push / logon / session / spawn / exec p50",
					Value: strings.Join([]string{ms(st.API.P50), ms(st.Queue.P50), ms(st.Push.P50), ms(st.Logon.P50), ms(st.Session.P50), ms(st.Spawn.P50), ms(st.Exec.P50)}, " / ")})
			for _, f := range []struct {
				fig string
				v   time.Duration
			}{{k.Hash + " logon p50", st.Logon.P50}, {"spawn p50", st.Spawn.P50}, {"push p50", st.Push.P50}, {"queue p50", st.Queue.P50}} {
				if l, ratio := against("run", f.fig, rs.SQLiteSync, f.v); l != "" {
					rows = append(rows, Row{Scenario: "3 run start", Figure: k.Hash + ": " + strings.TrimPrefix(f.fig, k.Hash+" "), Value: ms(f.v), Limit: l, Ratio: ratio})
				}
			}
		}
	}
	if b := r.Burst; b != nil {
		row := Row{Scenario: "4 burst", Figure: fmt.Sprintf("%d runs, %d users, %d slots: starts/s", b.N, b.Users, b.Slots),
			Value: fmt.Sprintf("%.0f/s", b.StartsPerSec), Target: fmt.Sprintf("≥ %.0f/s", TargetStartsPS), Met: ptr(b.Met)}
		// The machine's ceiling: every start costs at least a PAM SHA-512
		// logon and a spawn as the user, on all cores.
		pam, ok1 := limitCase(LimitPAMSHA512)
		sp, ok2 := limitCase(LimitSpawnSetuid)
		if ok1 && ok2 && b.StartsPerSec > 0 {
			ceiling := float64(b.Cores) / (pam.Latency.P50 + sp.Latency.P50).Seconds()
			row.Limit = fmt.Sprintf("%.0f/s (%d cores ÷ (pam_sha512 + spawn_setuid))", ceiling, b.Cores)
			row.Ratio = ceiling / b.StartsPerSec
		}
		per := func(d time.Duration) string { return ms(d / time.Duration(max(b.N, 1))) }
		rows = append(rows, row, Row{Scenario: "4 burst", Figure: "CPU per run: server / agent / the run's processes / API clients",
			Value: per(b.ServerCPU) + " / " + per(b.AgentCPU) + " / " + per(b.RunsCPU) + " / " + per(b.BenchCPU)})
	}
	for _, a := range r.Agents {
		label := fmt.Sprintf("%d agents", a.N)
		if l := a.MemAfter.GOMEMLIMIT; l > 0 && l < math.MaxInt64 {
			label += fmt.Sprintf(" (GOMEMLIMIT %d MiB)", l>>20)
		}
		peak := a.PerAgentPeakRSS
		if peak <= 0 { // no steady phase: the one reading
			peak = a.PerAgentRSS
		}
		rows = append(rows, Row{Scenario: "5 idle agents", Figure: label + ": server RSS per agent, peak over GC cycles",
			Value:  fmt.Sprintf("%.1f KB (one reading %.1f; heap %.1f, stacks %.1f)", float64(peak)/1000, float64(a.PerAgentRSS)/1000, float64(a.PerAgentHeap)/1000, float64(a.PerAgentStack)/1000),
			Target: "≤ 25 KB", Met: ptr(peak <= 25_000)},
			Row{Scenario: "5 idle agents", Figure: label + ": heartbeat CPU per 1,000 agents at 10 s",
				Value: fmt.Sprintf("%.2f %% of a core", a.CPUPercentPer1000At10s)})
	}
	if g := r.Growth; g != nil {
		for _, p := range g.Points {
			v := "round trip server p50 " + ms(p.RoundTrip.Server.P50)
			if p.RunStart != nil {
				v += ", run start without logon p50 " + ms(p.RunStart.NoHash.P50)
			}
			rows = append(rows, Row{Scenario: "6 growth", Figure: fmt.Sprintf("%d finished runs stored (%d MB)", p.StoredRuns, p.StoreBytes>>20), Value: v})
		}
		v := fmt.Sprintf("round trip %+.0f %%", 100*g.RoundTripChange)
		if len(g.Points) > 0 && g.Points[0].RunStart != nil {
			v += fmt.Sprintf(", run start %+.0f %%", 100*g.RunStartChange)
		}
		last := g.Points[len(g.Points)-1].StoredRuns
		rows = append(rows, Row{Scenario: "6 growth", Figure: fmt.Sprintf("p50 change from 0 to %d stored runs", last), Value: v,
			Target: fmt.Sprintf("within ±%.0f %%", 100*TargetGrowth), Met: ptr(g.Met)})
	}
	if f := r.Flow; f != nil {
		l, ratio := against("flow", "cloud-flow layer p50", f.SQLiteSync, f.LayerOverhead)
		rows = append(rows, Row{Scenario: "cloud flow", Figure: "webhook layer over a direct run, p50", Value: ms(f.LayerOverhead),
			Target: "≤ " + ms(TargetFlowOverheadP50), Met: ptr(f.LayerOverhead <= TargetFlowOverheadP50), Limit: l, Ratio: ratio})
	}
	return rows
}

// WriteTable prints the report's table (Rows, if Table is not set).
func (r *Report) WriteTable(w io.Writer) error {
	rows := r.Table
	if rows == nil {
		rows = r.Rows()
	}
	if r.Host.Cores > 0 { // a whole suite's report
		fmt.Fprintf(w, "deskrun bench: %d cores (%s), %s, %s, load at start %s; %s\n", r.Host.Cores, r.Host.CPU, r.Host.Kernel, r.Host.GoVersion,
			r.Host.LoadAvg, r.Duration.Round(time.Second))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tFIGURE\tVALUE\tTARGET\tMET\tLIMIT\t× LIMIT")
	for _, row := range rows {
		met := ""
		if row.Met != nil {
			met = "yes"
			if !*row.Met {
				met = "NO"
			}
		}
		ratio := ""
		if row.Ratio > 0 {
			ratio = fmt.Sprintf("%.1f×", row.Ratio)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", row.Scenario, row.Figure, row.Value, row.Target, met, row.Limit, ratio)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for name, e := range r.Errors {
		fmt.Fprintf(w, "%s: %s\n", name, e)
	}
	return nil
}
