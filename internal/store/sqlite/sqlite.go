// Package sqlite is the embedded store.Store backend: one SQLite file in
// WAL mode, the default for `deskrun dev` and single-server installs.
//
// Writes go through a pool of exactly one connection and every transaction
// begins IMMEDIATE, so writers queue in Go instead of failing with
// SQLITE_BUSY; reads use a separate read-only pool and, thanks to WAL, never
// wait for a writer. Times are stored as INTEGER unix nanoseconds (0 for
// the zero time) and read back in UTC.
package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/store"
)

// DB is a SQLite store. It is safe for concurrent use.
type DB struct {
	queries
	write *sql.DB // one connection: every write and transaction
	read  *sql.DB // read-only connections; the same as write for :memory:
	// Prepared statements of each pool (one cache when they are the same).
	writeStmts, readStmts *stmtCache
	// commit runs every write transaction, in batches (batch.go).
	commit *committer
}

var _ store.Store = (*DB)(nil)

type config struct {
	synchronous string
	busyTimeout time.Duration
	readConns   int
	autoMigrate bool
	onePool     bool // reads on the writer too; only to measure the split
}

// Option configures Open.
type Option func(*config)

// WithSynchronousNormal trades durability for speed: in WAL mode with
// synchronous=NORMAL a commit survives a crash of the process but the last
// transactions may be lost if the machine loses power. The default, FULL,
// fsyncs the WAL on every commit.
func WithSynchronousNormal() Option {
	return func(c *config) { c.synchronous = "NORMAL" }
}

// WithBusyTimeout sets how long a connection waits for a lock held by
// another process (a `deskrun migrate` next to a running server, a backup)
// before failing with SQLITE_BUSY. The default is 5s. Writers of the same
// DB never contend for the lock: they queue for the single writer.
func WithBusyTimeout(d time.Duration) Option {
	return func(c *config) { c.busyTimeout = d }
}

// WithReadConns sets the size of the read pool (default: GOMAXPROCS, at
// least 2).
func WithReadConns(n int) Option {
	return func(c *config) { c.readConns = n }
}

// WithAutoMigrate makes Open apply pending migrations. Without it, Open
// leaves the schema alone and the caller runs Migrate (the server at start,
// `deskrun migrate` on demand).
func WithAutoMigrate() Option {
	return func(c *config) { c.autoMigrate = true }
}

// Open opens (creating if needed) the SQLite database at path; ":memory:"
// gives a private in-memory database, for tests.
func Open(ctx context.Context, path string, opts ...Option) (*DB, error) {
	cfg := config{
		synchronous: "FULL",
		busyTimeout: 5 * time.Second,
		readConns:   max(2, runtime.GOMAXPROCS(0)),
	}
	for _, o := range opts {
		o(&cfg)
	}
	if path == "" || strings.ContainsRune(path, '?') {
		return nil, fmt.Errorf("open sqlite: invalid path %q", path)
	}

	db := &DB{}
	pragmas := []string{
		fmt.Sprintf("busy_timeout(%d)", cfg.busyTimeout.Milliseconds()),
		"foreign_keys(1)",
		"synchronous(" + cfg.synchronous + ")",
	}
	var err error
	switch {
	case path == ":memory:":
		// Every connection to :memory: is a different database: use one.
		db.write, err = openPool(path, "immediate", pragmas, 1)
		db.read = db.write
	case cfg.onePool:
		db.write, err = openPool(path, "immediate", append(pragmas, "journal_mode(WAL)"), 1)
		db.read = db.write
	default:
		db.write, err = openPool(path, "immediate", append(pragmas, "journal_mode(WAL)"), 1)
		if err == nil {
			db.read, err = openPool(path, "", append(pragmas, "query_only(1)"), cfg.readConns)
		}
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	db.writeStmts, db.readStmts = newStmtCache(db.write), newStmtCache(db.read)
	if db.read == db.write {
		db.readStmts = db.writeStmts
	}
	db.commit = newCommitter(db)
	db.queries = queries{r: db.readStmts, w: batchedWriter{db}, owner: db}

	// Connect the writer first: it switches the file to WAL, which a
	// query_only reader cannot do.
	if err := db.write.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	if err := db.read.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	if cfg.autoMigrate {
		if _, err := db.Migrate(ctx); err != nil {
			db.Close()
			return nil, err
		}
	}
	return db, nil
}

func openPool(path, txlock string, pragmas []string, conns int) (*sql.DB, error) {
	var q []string
	for _, p := range pragmas {
		q = append(q, "_pragma="+p)
	}
	if txlock != "" {
		q = append(q, "_txlock="+txlock)
	}
	pool, err := sql.Open("sqlite", path+"?"+strings.Join(q, "&"))
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	pool.SetMaxOpenConns(conns)
	pool.SetMaxIdleConns(conns)
	pool.SetConnMaxLifetime(0)
	pool.SetConnMaxIdleTime(0)
	return pool, nil
}

// Close closes both pools.
func (db *DB) Close() error {
	if db.commit != nil {
		db.commit.close()
	}
	for _, c := range []*stmtCache{db.readStmts, db.writeStmts} {
		if c != nil {
			c.close()
		}
	}
	var errs []error
	if db.read != nil && db.read != db.write {
		errs = append(errs, db.read.Close())
	}
	if db.write != nil {
		errs = append(errs, db.write.Close())
	}
	return errors.Join(errs...)
}

// Ping checks both pools.
func (db *DB) Ping(ctx context.Context) error {
	if err := db.write.PingContext(ctx); err != nil {
		return fmt.Errorf("ping sqlite: %w", err)
	}
	if err := db.read.PingContext(ctx); err != nil {
		return fmt.Errorf("ping sqlite: %w", err)
	}
	return nil
}

// InTx runs fn in a transaction on the writer and returns once it is
// committed (or failed). Transactions queued together share one commit
// (batch.go): fn runs under a savepoint of its own, so its error undoes
// only its writes, and it sees the writes of the transactions before it,
// as if they had committed one by one. The transaction begins IMMEDIATE,
// so a read followed by a write in fn cannot fail halfway with
// SQLITE_BUSY. fn must not use db itself: the writer is busy with fn's
// transaction and db's writes would wait for it.
func (db *DB) InTx(ctx context.Context, fn func(store.Tx) error) error {
	return db.commit.do(ctx, fn)
}

// tx is the store.Tx that InTx gives fn.
type tx struct {
	queries
	tx         *sql.Tx
	savepoints int
}

// InTx runs fn inside the current transaction, under a savepoint so that
// fn's error undoes only fn's writes.
func (t *tx) InTx(ctx context.Context, fn func(store.Tx) error) error {
	t.savepoints++
	sp := fmt.Sprintf("sp%d", t.savepoints)
	if _, err := t.tx.ExecContext(ctx, "SAVEPOINT "+sp); err != nil {
		return fmt.Errorf("savepoint: %w", err)
	}
	done := false
	defer func() {
		if !done {
			_, _ = t.tx.ExecContext(context.WithoutCancel(ctx), "ROLLBACK TO "+sp)
		}
	}()
	if err := fn(t); err != nil {
		done = true
		if _, rbErr := t.tx.ExecContext(context.WithoutCancel(ctx), "ROLLBACK TO "+sp+"; RELEASE "+sp); rbErr != nil {
			return errors.Join(err, fmt.Errorf("rollback to savepoint: %w", rbErr))
		}
		return err
	}
	done = true
	if _, err := t.tx.ExecContext(ctx, "RELEASE "+sp); err != nil {
		return fmt.Errorf("release savepoint: %w", err)
	}
	return nil
}

// execer is what queries need from *sql.DB and *sql.Tx.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// queries holds the SQL of every store.Tx method. Outside a transaction r
// is the read pool and w the writer; inside one both are the *sql.Tx, so
// reads see the transaction's own writes.
type queries struct {
	r, w execer
	// owner is the DB or tx these queries belong to. A method that writes
	// several rows runs them through atomic, so it is all or nothing on
	// its own and joins the caller's transaction when there is one.
	owner store.Tx
}

// atomic runs fn in owner.InTx: a transaction on a DB, a savepoint in a
// tx. fn gets the queries of that transaction and must use only them.
func (q *queries) atomic(ctx context.Context, fn func(q *queries) error) error {
	return q.owner.InTx(ctx, func(t store.Tx) error {
		return fn(&t.(*tx).queries) // both InTx give fn a *tx
	})
}

// nanos and fromNanos convert times to the stored form: unix nanoseconds,
// with 0 for the zero time (so a time before 1678 or after 2262 cannot be
// stored, which no deskrun time is).
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// blob stores an empty slice as NULL; nonEmpty reads NULL or empty as nil,
// so a value round-trips to what was stored.
func blob(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

func nonEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// text stores empty JSON as NULL.
func text(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}

// rawJSON reads a JSON column: NULL (or empty) is nil.
func rawJSON(s sql.NullString) json.RawMessage {
	if s.String == "" {
		return nil
	}
	return json.RawMessage(s.String)
}

// errorJSON stores an error as JSON; nil is NULL.
func errorJSON(e *deskrun.Error) (any, error) {
	if e == nil {
		return nil, nil
	}
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encode error: %w", err)
	}
	return string(b), nil
}

// decodeError reads an error column that errorJSON wrote: NULL (or empty)
// is nil.
func decodeError(s sql.NullString) (*deskrun.Error, error) {
	if s.String == "" {
		return nil, nil
	}
	e := new(deskrun.Error)
	if err := json.Unmarshal([]byte(s.String), e); err != nil {
		return nil, err
	}
	return e, nil
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }
