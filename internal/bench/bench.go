// Package bench measures deskrun end to end, over real sockets: the
// latency of a no-op job from the API to an agent and back (RoundTrip),
// what idle agents cost a server in memory and heartbeat CPU (Agents), and
// how fast a desktop-flow run starts as a real user (RunStart, Burst), and
// what a webhook-triggered cloud flow adds to that start (Flow).
// `deskrun bench` and the Go benchmarks in this package drive it; the
// numbers and how to reproduce them are in BENCHMARKS.md.
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
