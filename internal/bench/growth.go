package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/deskrun/deskrun/internal/wire"
)

// TargetGrowth is issue #9's bound on how much the round trip and the run
// start may slow down from an empty store to one holding a million
// finished runs: ±20 % at p50.
const TargetGrowth = 0.20

// GrowthOptions configure the cost-growth scenario.
type GrowthOptions struct {
	// Sizes are the numbers of finished runs in the store at each step,
	// ascending (each step seeds the difference).
	Sizes []int
	// N round trips and RunN run starts (root only; 0 skips them) are
	// measured at each size, after Warmup unmeasured ones.
	N, RunN, Warmup int
	// Command and Env run deskrun when there are no run starts to
	// measure; with them, Env.Executable does (built if empty).
	Command, Env []string
	Desktop      DesktopEnvOptions // Executable, Data, SQLiteSync, Progress
}

// GrowthPoint is what was measured at one size.
type GrowthPoint struct {
	StoredRuns int              `json:"stored_runs"`
	StoreBytes int64            `json:"store_bytes"`
	Seed       time.Duration    `json:"seed_ns"` // writing the rows, with the server stopped
	Restart    time.Duration    `json:"restart_ns"`
	RoundTrip  *RoundTripResult `json:"round_trip"`
	RunStart   *Stages          `json:"run_start,omitempty"` // SHA-512 user
}

// GrowthResult is the scenario's result: each point, and the change of
// each p50 from the first size to the last, as a fraction (0.1 = 10 %
// slower).
type GrowthResult struct {
	Points          []GrowthPoint `json:"points"`
	RoundTripChange float64       `json:"round_trip_change"`
	RunStartChange  float64       `json:"run_start_change,omitempty"`
	Met             bool          `json:"met"`
}

// Growth measures the round trip (scenario 1) and, as root, the run start
// without the hash (scenario 3) with o.Sizes finished runs in the store.
// Between sizes the server is stopped, the runs are written into its
// SQLite file (SeedRuns) and the server is started again; the agent
// reconnects.
func Growth(ctx context.Context, o GrowthOptions) (*GrowthResult, error) {
	if len(o.Sizes) == 0 || o.N <= 0 {
		return nil, errors.New("growth: sizes and N must be set")
	}
	progress := func(format string, a ...any) {
		if o.Desktop.Progress != nil {
			fmt.Fprintf(o.Desktop.Progress, format+"\n", a...)
		}
	}
	var (
		w    *world
		conn = "bench-history"
		done func() // stops the world
	)
	if o.RunN > 0 && NeedRoot() == nil {
		eo := o.Desktop
		eo.Users = []string{HashSHA512}
		env, err := StartDesktopEnv(ctx, eo)
		if err != nil {
			return nil, err
		}
		w, conn, done = env.world, env.Connections[0], env.Close
	} else {
		o.RunN = 0
		cmd := o.Command
		if len(cmd) == 0 && o.Desktop.Executable != "" {
			cmd = []string{o.Desktop.Executable}
		}
		rt, err := StartRoundTrip(ctx, RoundTripOptions{Command: cmd, Env: o.Env, Data: o.Desktop.Data, SQLiteSync: o.Desktop.SQLiteSync})
		if err != nil {
			return nil, err
		}
		w, done = rt.world, rt.Close
		if _, err := w.Client.CreateConnection(ctx, wire.ConnectionCreate{Name: conn, Machine: w.Machine, Username: "history",
			Password: wire.Secret("unused"), SkipTest: true}); err != nil {
			done()
			return nil, err
		}
		dir, err := os.MkdirTemp("", "deskrun-bench-flow-")
		if err != nil {
			done()
			return nil, err
		}
		err = pushFlow(ctx, w.Client, dir, flowPlain, runPlain)
		os.RemoveAll(dir)
		if err != nil {
			done()
			return nil, err
		}
	}
	defer done()
	h, err := historyOf(ctx, w, conn)
	if err != nil {
		return nil, err
	}
	rt := &RoundTripEnv{w}
	var desk *DesktopEnv
	if o.RunN > 0 {
		desk = &DesktopEnv{world: w}
	}
	res := &GrowthResult{}
	stored := 0
	for _, size := range o.Sizes {
		p := GrowthPoint{StoredRuns: size}
		if size > stored {
			if err := w.stopServer(); err != nil {
				return nil, err
			}
			t0 := time.Now()
			if err := SeedRuns(ctx, w.Store(), size-stored, h); err != nil {
				return nil, err
			}
			p.Seed = time.Since(t0)
			t0 = time.Now()
			if err := w.startServer(ctx); err != nil {
				return nil, err
			}
			p.Restart, stored = time.Since(t0), size
		}
		if fi, err := os.Stat(w.Store()); err == nil {
			p.StoreBytes = fi.Size()
		}
		if p.RoundTrip, err = rt.measure(ctx, o.N, o.Warmup); err != nil {
			return nil, err
		}
		if desk != nil {
			st, err := desk.measureStarts(ctx, conn, o.RunN, min(o.Warmup, 5))
			if err != nil {
				return nil, err
			}
			p.RunStart = &st
		}
		progress("growth: %d stored runs (%d MB, seeded in %s): round trip server p50 %s", size, p.StoreBytes>>20,
			p.Seed.Round(time.Millisecond), p.RoundTrip.Server.P50)
		res.Points = append(res.Points, p)
	}
	first, last := res.Points[0], res.Points[len(res.Points)-1]
	res.RoundTripChange = change(first.RoundTrip.Server.P50, last.RoundTrip.Server.P50)
	res.Met = math.Abs(res.RoundTripChange) <= TargetGrowth
	if first.RunStart != nil {
		res.RunStartChange = change(first.RunStart.NoHash.P50, last.RunStart.NoHash.P50)
		res.Met = res.Met && math.Abs(res.RunStartChange) <= TargetGrowth
	}
	return res, nil
}

func change(from, to time.Duration) float64 {
	if from <= 0 {
		return 0
	}
	return float64(to-from) / float64(from)
}

// historyOf finds what seeded runs refer to: the world's machine, the
// connection and the plain benchmark flow.
func historyOf(ctx context.Context, w *world, conn string) (History, error) {
	c, err := w.Client.Connection(ctx, conn)
	if err != nil {
		return History{}, err
	}
	f, err := w.Client.DesktopFlow(ctx, flowPlain)
	if err != nil {
		return History{}, err
	}
	return History{MachineID: w.Machine, ConnectionID: c.ID, Flow: f.Latest.Name, Version: f.Latest.Version, Digest: f.Latest.Digest}, nil
}
