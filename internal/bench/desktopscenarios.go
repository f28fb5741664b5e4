package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Targets of the desktop-flows issue for everything but the password
// hash, trigger → process started.
const (
	TargetNoHashP50 = 5 * time.Millisecond
	TargetNoHashP99 = 20 * time.Millisecond
	TargetStartsPS  = 300.0
)

// Stages are the percentiles of one run's trigger → process start and of
// its parts. Each column is summarised on its own, so the p50s of the
// parts do not add up to the p50 of Total.
type Stages struct {
	// Total: the client's clock before POST /api/v1/desktopflows/{f}/runs
	// → the stamp the flow's first command (date) writes as the user.
	Total Percentiles `json:"total"`
	// API: trigger → the run's created_at (HTTPS request, token check,
	// flow and connection lookups; created_at is stamped before the
	// insert commits).
	API Percentiles `json:"api"`
	// Queue: created_at → assigned_at: the insert's commit, the scheduler
	// kick and its pass (queued and active runs, connection, machine,
	// flow version), the payload.
	Queue Percentiles `json:"queue"`
	// Push: assigned_at → logon_at (stamped when the server reads the
	// agent's "state:logging-on"): the run's update commit, the job's
	// insert commit, the push over the WebSocket, the agent recording the
	// job and acking it, the package cache check, the progress frame back.
	Push Percentiles `json:"push"`
	// Logon, Session, Display, Spawn are the agent's Timings: unseal +
	// PAM authenticate + acct_mgmt + open_session + NSS (≈ the password
	// hash); run directory, package copy, inputs, environment; the
	// display (none here); runas.Start up to the exec of /bin/sh as the
	// user (fork, cgroup, drop, exec, the stop at exec where the agent checks
	// the process's credentials).
	Logon   Percentiles `json:"logon"`
	Session Percentiles `json:"session"`
	Display Percentiles `json:"display"`
	Spawn   Percentiles `json:"spawn"`
	// Exec: what is left, stamp − (logon_at + logon + session + display +
	// spawn): dash starting and forking/execing date, minus the transit
	// of the progress frame (logon_at is the server's receipt).
	Exec Percentiles `json:"exec"`
	// NoHash is Total − Logon: everything but the password hash.
	NoHash Percentiles `json:"no_hash"`
	// Date is u − t of the calibrating flow: one fork+exec of date from
	// dash, i.e. roughly how late the stamp is after the shell started.
	Date Percentiles `json:"date,omitzero"`
}

type stageSamples struct {
	total, api, queue, push, logon, session, display, spawn, exec, noHash, date []time.Duration
}

func (s *stageSamples) add(trigger time.Time, st *runStamp) {
	r := st.run
	logon, session, display, spawn := st.timing("logon"), st.timing("session"), st.timing("display"), st.timing("spawn")
	total := st.start.Sub(trigger)
	s.total = append(s.total, total)
	s.api = append(s.api, r.CreatedAt.Sub(trigger))
	s.queue = append(s.queue, r.AssignedAt.Sub(r.CreatedAt))
	s.push = append(s.push, r.LogonAt.Sub(r.AssignedAt))
	s.logon, s.session, s.display, s.spawn = append(s.logon, logon), append(s.session, session), append(s.display, display), append(s.spawn, spawn)
	s.exec = append(s.exec, st.start.Sub(r.LogonAt)-logon-session-display-spawn)
	s.noHash = append(s.noHash, total-logon)
	if st.date > 0 {
		s.date = append(s.date, st.date)
	}
}

func (s *stageSamples) summary() Stages {
	return Stages{Total: Summarize(s.total), API: Summarize(s.api), Queue: Summarize(s.queue), Push: Summarize(s.push),
		Logon: Summarize(s.logon), Session: Summarize(s.session), Display: Summarize(s.display), Spawn: Summarize(s.spawn),
		Exec: Summarize(s.exec), NoHash: Summarize(s.noHash), Date: Summarize(s.date)}
}

// RunOptions configure the run scenario.
type RunOptions struct {
	// N sequential runs are measured per hash, after Warmup unmeasured
	// ones (the first fetches the package).
	N, Warmup int
	// Hashes are the users' password hashes; empty means sha512 and
	// yescrypt.
	Hashes []string
	Env    DesktopEnvOptions
}

// RunKind is what the run scenario measured for one user.
type RunKind struct {
	Hash   string `json:"hash"`
	User   string `json:"user"`
	Stages Stages `json:"stages"`
	// Whether Total − Logon met the targets (≤ 5 ms p50, ≤ 20 ms p99).
	MetP50 bool `json:"met_p50"`
	MetP99 bool `json:"met_p99"`
}

// RunResult is the run scenario's result.
type RunResult struct {
	SQLiteSync string    `json:"sqlite_sync"`
	Kinds      []RunKind `json:"kinds"`
}

// RunStart measures trigger → flow process started for sequential desktop-flow
// runs, one user per hash, through a real server, agent, PAM and runas.
func RunStart(ctx context.Context, o RunOptions) (*RunResult, error) {
	if o.N <= 0 {
		return nil, errors.New("run: N must be positive")
	}
	hashes := o.Hashes
	if len(hashes) == 0 {
		hashes = []string{HashSHA512, HashYescrypt}
	}
	eo := o.Env
	eo.Users = hashes
	env, err := StartDesktopEnv(ctx, eo)
	if err != nil {
		return nil, err
	}
	defer env.Close()
	res := &RunResult{SQLiteSync: env.SQLiteSync}
	for i, h := range hashes {
		st, err := env.measureStarts(ctx, env.Connections[i], o.N, o.Warmup)
		if err != nil {
			return nil, err
		}
		k := RunKind{Hash: h, User: env.Users[i], Stages: st}
		k.MetP50, k.MetP99 = k.Stages.NoHash.P50 <= TargetNoHashP50, k.Stages.NoHash.P99 <= TargetNoHashP99
		env.progress("%s: trigger→start %s; without logon %s", h, k.Stages.Total, k.Stages.NoHash)
		res.Kinds = append(res.Kinds, k)
	}
	return res, nil
}

// measureStarts times n sequential runs of the calibrating flow on conn,
// after warmup unmeasured ones.
func (env *DesktopEnv) measureStarts(ctx context.Context, conn string, n, warmup int) (Stages, error) {
	var s stageSamples
	for k := range warmup + n {
		trigger := time.Now()
		r, err := env.startRun(ctx, flowCal, conn)
		if err != nil {
			return Stages{}, fmt.Errorf("start run: %w", err)
		}
		st, err := env.waitRun(ctx, r.ID)
		if err != nil {
			return Stages{}, err
		}
		if k >= warmup {
			s.add(trigger, st)
		}
	}
	return s.summary(), nil
}

// BurstOptions configure the burst scenario.
type BurstOptions struct {
	// N runs are submitted at once across Users SHA-512 users (one
	// connection each) by Submitters concurrent API clients, to one
	// machine with Slots slots.
	N, Users, Slots, Submitters int
	// Env.ProfileDir, if set, receives CPU profiles of the server and the
	// agent processes (their whole life, warm-up included).
	Env DesktopEnvOptions
}

// BurstResult is what the burst scenario measured. Durations are from
// the first submit.
type BurstResult struct {
	N          int `json:"n"`
	Users      int `json:"users"`
	Slots      int `json:"slots"`
	Submitters int `json:"submitters"`
	// Submitted: the last POST answered; SubmitPerSec = N / Submitted.
	Submitted    time.Duration `json:"submitted_ns"`
	SubmitPerSec float64       `json:"submit_per_sec"`
	// FirstStart and LastStart are the flows' own stamps; StartsPerSec =
	// N / LastStart (first submit → Nth process started).
	FirstStart   time.Duration `json:"first_start_ns"`
	LastStart    time.Duration `json:"last_start_ns"`
	StartsPerSec float64       `json:"starts_per_sec"`
	LastFinish   time.Duration `json:"last_finish_ns"`
	Met          bool          `json:"met"`
	// Per-run stages under load (queue waits for a slot here).
	Stages Stages `json:"stages"`
	// CPU over first submit → last finish: the server process, the agent
	// process, the agent's reaped children (the runs: sh, date), this
	// process (the API clients), and the whole machine's busy share of all
	// cores.
	Wall        time.Duration `json:"wall_ns"`
	ServerCPU   time.Duration `json:"server_cpu_ns"`
	AgentCPU    time.Duration `json:"agent_cpu_ns"`
	RunsCPU     time.Duration `json:"runs_cpu_ns"`
	BenchCPU    time.Duration `json:"bench_cpu_ns"`
	MachineBusy float64       `json:"machine_busy_percent"`
	Cores       int           `json:"cores"`
}

// Burst submits N runs as fast as the API takes them and measures how
// fast the machine starts them.
func Burst(ctx context.Context, o BurstOptions) (_ *BurstResult, err error) {
	if o.N <= 0 || o.Users <= 0 || o.Slots <= 0 {
		return nil, errors.New("burst: N, users and slots must be positive")
	}
	if o.Submitters <= 0 {
		o.Submitters = 32
	}
	eo := o.Env
	eo.Slots = o.Slots
	eo.Users = make([]string, o.Users)
	for i := range eo.Users {
		eo.Users[i] = HashSHA512
	}
	env, err := StartDesktopEnv(ctx, eo)
	if err != nil {
		return nil, err
	}
	defer env.Close()

	// Warm up: one run per connection (package fetch, caches, the HTTP
	// client's connections).
	err = parallel(ctx, len(env.Connections), len(env.Connections), func(ctx context.Context, i int) error {
		r, err := env.startRun(ctx, flowPlain, env.Connections[i])
		if err != nil {
			return err
		}
		_, err = env.waitRun(ctx, r.ID)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}

	pid := os.Getpid()
	cpu0, _ := ReadCPU(pid)
	srv0, _, _ := env.Server.CPU()
	ag0, runs0, _ := env.Agent.CPU()
	busy0, total0, _ := machineCPU()
	ids := make([]string, o.N)
	triggers := make([]time.Time, o.N)
	t0 := time.Now()
	err = parallel(ctx, o.N, o.Submitters, func(ctx context.Context, i int) error {
		triggers[i] = time.Now()
		r, err := env.startRun(ctx, flowPlain, env.Connections[i%len(env.Connections)])
		ids[i] = r.ID
		return err
	})
	submitted := time.Since(t0)
	if err != nil {
		return nil, fmt.Errorf("submit: %w", err)
	}
	env.progress("submitted %d runs in %s", o.N, submitted.Round(time.Millisecond))
	stamps := make([]*runStamp, o.N)
	for i, id := range ids {
		if stamps[i], err = env.waitRun(ctx, id); err != nil {
			return nil, err
		}
	}
	wall := time.Since(t0)
	cpu1, _ := ReadCPU(pid)
	srv1, _, _ := env.Server.CPU()
	ag1, runs1, _ := env.Agent.CPU()
	busy1, total1, _ := machineCPU()

	res := &BurstResult{N: o.N, Users: o.Users, Slots: o.Slots, Submitters: o.Submitters, Submitted: submitted,
		SubmitPerSec: float64(o.N) / submitted.Seconds(), Wall: wall, ServerCPU: srv1 - srv0, AgentCPU: ag1 - ag0,
		RunsCPU: runs1 - runs0, BenchCPU: cpu1 - cpu0}
	if total1 > total0 {
		res.MachineBusy = 100 * float64(busy1-busy0) / float64(total1-total0)
	}
	res.Cores = cores()
	var s stageSamples
	starts := make([]time.Duration, 0, o.N)
	for i, st := range stamps {
		s.add(triggers[i], st)
		starts = append(starts, st.start.Sub(t0))
		res.LastFinish = max(res.LastFinish, st.run.FinishedAt.Sub(t0))
	}
	res.FirstStart, res.LastStart = slices.Min(starts), slices.Max(starts)
	res.StartsPerSec = float64(o.N) / res.LastStart.Seconds()
	res.Met = res.StartsPerSec >= TargetStartsPS
	res.Stages = s.summary()
	return res, nil
}

// machineCPU reads the aggregate line of /proc/stat: busy and total ticks.
func machineCPU() (busy, total int64, err error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, 0, errors.New("/proc/stat: empty")
	}
	fs := strings.Fields(sc.Text())
	if len(fs) < 6 || fs[0] != "cpu" {
		return 0, 0, errors.New("/proc/stat: malformed")
	}
	for i, v := range fs[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total, nil
}

func cores() int {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "cpu") && len(l) > 3 && l[3] >= '0' && l[3] <= '9' {
			n++
		}
	}
	return n
}
