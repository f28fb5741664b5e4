// Package bench is deskrun's performance suite (issue #9): real `deskrun
// server` and `deskrun agent` processes over real TLS sockets on
// 127.0.0.1, driven through the API, with every figure read from the
// server's stamps, the agent's timings and /proc. Suite runs the scenarios
// (Limits, RoundTrip, NoopRuns, RunStart, Burst, Flow, Growth, Agents)
// and builds a Report: each figure against its target and against the
// limit the same machine measured minutes before. `deskrun bench` and
// `make bench` drive it; BENCHMARKS.md has the numbers.
package bench

import (
	"fmt"
	"slices"
	"syscall"
	"time"
)

// Percentiles summarises a sample of durations.
type Percentiles struct {
	N    int           `json:"n"`
	Min  time.Duration `json:"min_ns"`
	Mean time.Duration `json:"mean_ns"`
	P50  time.Duration `json:"p50_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	P999 time.Duration `json:"p999_ns"`
	Max  time.Duration `json:"max_ns"`
}

// Summarize computes nearest-rank percentiles of ds (it sorts ds).
func Summarize(ds []time.Duration) Percentiles {
	if len(ds) == 0 {
		return Percentiles{}
	}
	slices.Sort(ds)
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(ds))+0.999999) - 1 // ceil(p·n) − 1
		return ds[min(max(i, 0), len(ds)-1)]
	}
	return Percentiles{N: len(ds), Min: ds[0], Mean: sum / time.Duration(len(ds)),
		P50: rank(0.50), P90: rank(0.90), P99: rank(0.99), P999: rank(0.999), Max: ds[len(ds)-1]}
}

func (p Percentiles) String() string {
	us := func(d time.Duration) string { return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond)) }
	return fmt.Sprintf("n=%d p50=%s p90=%s p99=%s p99.9=%s max=%s mean=%s",
		p.N, us(p.P50), us(p.P90), us(p.P99), us(p.P999), us(p.Max), us(p.Mean))
}

// RaiseFileLimit lifts this process's open-file soft limit to its hard
// limit, so thousands of sockets fit; child processes inherit it.
func RaiseFileLimit() (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, err
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return 0, err
		}
	}
	return l.Cur, nil
}
