package bench_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/bench"
)

// TestLimits runs every limit a few times so the harness cannot rot, and
// checks the figures could be limits: positive, ordered, and the setuid
// spawn really a spawn as another user.
func TestLimits(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := bench.Limits(ctx, bench.LimitsOptions{N: 10, Warmup: 1, Data: t.TempDir()})
	require.NoError(t, err)
	require.Equal(t, 10, r.N)

	root := os.Geteuid() == 0
	rootOnly := map[string]bool{bench.LimitSpawn: true, bench.LimitSpawnSetuid: true, bench.LimitPAMSHA512: true, bench.LimitPAMYescrypt: true}
	for _, name := range []string{bench.LimitSQLiteFull, bench.LimitSQLiteNormal, bench.LimitWSRTT,
		bench.LimitSpawn, bench.LimitSpawnSetuid, bench.LimitPAMSHA512, bench.LimitPAMYescrypt} {
		c, ok := r.Case(name)
		require.True(t, ok, "case %s missing", name)
		if rootOnly[name] && !root {
			require.NotEmpty(t, c.Skipped, "%s ran without root", name)
			continue
		}
		require.Empty(t, c.Skipped, name)
		p := c.Latency
		require.Equal(t, 10, p.N, name)
		require.Positive(t, p.Min, name)
		require.LessOrEqual(t, p.Min, p.P50, name)
		require.LessOrEqual(t, p.P50, p.P99, name)
		require.LessOrEqual(t, p.P99, p.Max, name)
		require.Less(t, p.P50, time.Second, "%s: p50 %s is no limit", name, p.P50)
		require.Positive(t, c.PerSecond, name)
	}
	if !root {
		t.Log("not root: spawn, spawn as a user and raw PAM skipped (they create local users); CI runs them as root")
		require.Nil(t, r.Spawn)
		return
	}

	// The setuid child ran as the user it was given, not as root.
	p := r.Spawn
	require.NotNil(t, p)
	require.NotZero(t, p.UID)
	require.NotZero(t, p.GID)
	require.Equal(t, fmt.Sprintf("%d %d %d", p.UID, p.GID, p.GID), p.Child, "a fresh -U user's only group is its own")
	// The hash is the cost of a logon: yescrypt's is far above SHA-512's.
	sha, _ := r.Case(bench.LimitPAMSHA512)
	yes, _ := r.Case(bench.LimitPAMYescrypt)
	require.Greater(t, yes.Latency.P50, sha.Latency.P50)

	// Every comparison has a limit from this run, whichever the sync mode.
	for _, c := range bench.Comparisons {
		for _, sync := range []string{"FULL", "NORMAL"} {
			l, err := r.Limit(c, sync)
			require.NoError(t, err, "%s %s", c.Scenario, c.Figure)
			require.Positive(t, l)
			require.InDelta(t, 2.0, bench.Ratio(2*l, l), 1e-9)
		}
	}
}

func TestLimitSums(t *testing.T) {
	t.Parallel()
	ms := time.Millisecond
	r := &bench.LimitsResult{Cases: []bench.LimitCase{
		{Name: bench.LimitSQLiteFull, Latency: bench.Percentiles{P50: 2 * ms}},
		{Name: bench.LimitSQLiteNormal, Latency: bench.Percentiles{P50: ms}},
		{Name: bench.LimitWSRTT, Latency: bench.Percentiles{P50: 10 * ms}},
		{Name: bench.LimitSpawnSetuid, Skipped: "needs root"},
	}}
	c := bench.Comparison{Limit: []bench.LimitTerm{{Case: bench.LimitWSRTT, Count: 1}, {Case: bench.LimitSQLiteCommit, Count: 2}}}
	l, err := r.Limit(c, "FULL")
	require.NoError(t, err)
	require.Equal(t, 14*ms, l)
	l, err = r.Limit(c, "normal")
	require.NoError(t, err)
	require.Equal(t, 12*ms, l)
	l, err = r.Limit(c, "")
	require.NoError(t, err)
	require.Equal(t, 14*ms, l, "the store's default is FULL")

	_, err = r.Limit(bench.Comparison{Limit: []bench.LimitTerm{{Case: bench.LimitSpawnSetuid, Count: 1}}}, "")
	require.ErrorContains(t, err, "skipped")
	_, err = r.Limit(bench.Comparison{Limit: []bench.LimitTerm{{Case: bench.LimitPAMSHA512, Count: 1}}}, "")
	require.ErrorContains(t, err, "not measured")

	require.InDelta(t, 1.5, bench.Ratio(3*ms, 2*ms), 1e-9)
	require.Zero(t, bench.Ratio(3*ms, 0))

	// The table names only cases Limits measures.
	known := map[string]bool{bench.LimitSQLiteCommit: true, bench.LimitSQLiteFull: true, bench.LimitSQLiteNormal: true,
		bench.LimitSpawn: true, bench.LimitSpawnSetuid: true, bench.LimitWSRTT: true, bench.LimitPAMSHA512: true, bench.LimitPAMYescrypt: true}
	for _, c := range bench.Comparisons {
		require.NotEmpty(t, c.Limit)
		for _, term := range c.Limit {
			require.True(t, known[term.Case], "%s %s: unknown limit %s", c.Scenario, c.Figure, term.Case)
			require.Positive(t, term.Count)
		}
	}
}
