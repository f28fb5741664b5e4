package sqlite

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/store"
)

func cached(c *stmtCache, query string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stmts[query] != nil
}

// TestStmtCache: queries are prepared once and reused, inside and outside
// transactions; a transaction's first use of a query never waits for the
// writer it holds; several statements in one string are never prepared
// (Prepare would keep only the first).
func TestStmtCache(t *testing.T) {
	t.Parallel()
	db := openTemp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m := &deskrun.Machine{ID: "m_1", Name: "one", State: deskrun.MachineOffline}

	// First seen inside a transaction: it runs (no deadlock on the single
	// writer) and is prepared in the background once the writer is free.
	require.NoError(t, db.InTx(ctx, func(tx store.Tx) error { return tx.CreateMachine(ctx, m) }))
	_, err := db.GetMachine(ctx, "m_1")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		db.writeStmts.mu.Lock()
		defer db.writeStmts.mu.Unlock()
		return len(db.writeStmts.stmts) > 0 && len(db.writeStmts.inflight) == 0
	}, 5*time.Second, 10*time.Millisecond)
	require.NotEmpty(t, db.readStmts.stmts, "reads are prepared on the read pool")

	// Reused, not prepared again: same statement object.
	var q string
	db.readStmts.mu.Lock()
	for k := range db.readStmts.stmts {
		q = k
	}
	first := db.readStmts.stmts[q]
	db.readStmts.mu.Unlock()
	_, err = db.GetMachine(ctx, "m_1")
	require.NoError(t, err)
	require.Same(t, first, db.readStmts.stmt(ctx, q))

	// Several statements: executed whole, never cached.
	multi := "CREATE TABLE scratch_a (x); CREATE TABLE scratch_b (y)"
	_, err = db.writeStmts.ExecContext(ctx, multi)
	require.NoError(t, err)
	require.False(t, cached(db.writeStmts, multi))
	_, err = db.writeStmts.ExecContext(ctx, "INSERT INTO scratch_b VALUES (1)")
	require.NoError(t, err, "the second statement ran too")

	// A query that does not prepare reports its error and is not cached.
	bad := "SELECT nope FROM nowhere"
	_, err = db.readStmts.QueryContext(ctx, bad)
	require.Error(t, err)
	require.False(t, cached(db.readStmts, bad))

	// Closed: statements are closed and nothing new is cached.
	require.NoError(t, db.Close())
	require.Empty(t, db.writeStmts.stmts)
	require.Nil(t, db.writeStmts.stmt(ctx, "SELECT 1"))
}
