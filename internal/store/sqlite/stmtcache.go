package sqlite

import (
	"context"
	"database/sql"
	"strings"
	"sync"
)

// maxCachedStmts bounds the statement cache. The store's queries are a
// fixed set of strings (well under this), so the bound only matters if a
// query were ever built with values inlined: those then run unprepared.
const maxCachedStmts = 512

// stmtCache is an execer over a pool that prepares each distinct query once
// and reuses it. SQLite spends more time parsing and planning a short
// statement than running it: before this cache, preparing was about 30 % of
// the server's CPU under load (BENCHMARKS.md, durable no-op runs).
// database/sql keeps each *sql.Stmt prepared per pool connection, and a
// transaction reuses the writer's copy (Tx.StmtContext on the same
// connection), so the single-writer pool prepares every write once.
//
// A transaction holds the writer's only connection, so it must never wait
// for a prepare on the pool (that would wait for the transaction itself):
// inside a transaction a query not yet cached runs unprepared, and is
// prepared in the background once the writer is free.
type stmtCache struct {
	db       *sql.DB
	mu       sync.Mutex
	stmts    map[string]*sql.Stmt
	inflight map[string]bool
	closed   bool
}

func newStmtCache(db *sql.DB) *stmtCache {
	return &stmtCache{db: db, stmts: map[string]*sql.Stmt{}, inflight: map[string]bool{}}
}

// cacheable says whether query may be prepared once: Prepare would keep
// only the first of several statements.
func cacheable(query string) bool {
	i := strings.IndexByte(query, ';')
	return i < 0 || strings.TrimSpace(query[i+1:]) == ""
}

// lookup returns the cached statement, or nil; with claim it marks a miss
// as being prepared by the caller and says so (false: someone else is, or
// it must not be cached).
func (c *stmtCache) lookup(query string) (s *sql.Stmt, claimed bool) {
	if !cacheable(query) {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.stmts[query]; s != nil {
		return s, false
	}
	if c.closed || c.inflight[query] || len(c.stmts)+len(c.inflight) >= maxCachedStmts {
		return nil, false
	}
	c.inflight[query] = true
	return nil, true
}

// prepare prepares a claimed query and caches it; nil if that failed (the
// unprepared call then reports the error).
func (c *stmtCache) prepare(ctx context.Context, query string) *sql.Stmt {
	s, err := c.db.PrepareContext(context.WithoutCancel(ctx), query)
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.inflight, query)
	if err != nil {
		return nil
	}
	if c.closed {
		_ = s.Close()
		return nil
	}
	c.stmts[query] = s
	return s
}

// stmt returns the statement for query outside a transaction, preparing
// it on a miss.
func (c *stmtCache) stmt(ctx context.Context, query string) *sql.Stmt {
	s, claimed := c.lookup(query)
	if claimed {
		s = c.prepare(ctx, query)
	}
	return s
}

// txStmt returns the cached statement for query inside a transaction, or
// nil; a miss is prepared in the background.
func (c *stmtCache) txStmt(query string) *sql.Stmt {
	s, claimed := c.lookup(query)
	if claimed {
		go c.prepare(context.Background(), query)
	}
	return s
}

func (c *stmtCache) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if s := c.stmt(ctx, query); s != nil {
		return s.ExecContext(ctx, args...)
	}
	return c.db.ExecContext(ctx, query, args...)
}

func (c *stmtCache) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if s := c.stmt(ctx, query); s != nil {
		return s.QueryContext(ctx, args...)
	}
	return c.db.QueryContext(ctx, query, args...)
}

func (c *stmtCache) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if s := c.stmt(ctx, query); s != nil {
		return s.QueryRowContext(ctx, args...)
	}
	return c.db.QueryRowContext(ctx, query, args...)
}

// close closes the cached statements (before the pool).
func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for q, s := range c.stmts {
		_ = s.Close()
		delete(c.stmts, q)
	}
}

// txStmts is the execer of a transaction: the writer's cached statements,
// bound to the transaction.
type txStmts struct {
	tx    *sql.Tx
	cache *stmtCache
}

func (t txStmts) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if s := t.cache.txStmt(query); s != nil {
		return t.tx.StmtContext(ctx, s).ExecContext(ctx, args...)
	}
	return t.tx.ExecContext(ctx, query, args...)
}

func (t txStmts) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if s := t.cache.txStmt(query); s != nil {
		return t.tx.StmtContext(ctx, s).QueryContext(ctx, args...)
	}
	return t.tx.QueryContext(ctx, query, args...)
}

func (t txStmts) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if s := t.cache.txStmt(query); s != nil {
		return t.tx.StmtContext(ctx, s).QueryRowContext(ctx, args...)
	}
	return t.tx.QueryRowContext(ctx, query, args...)
}
