package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"

	"github.com/deskrun/deskrun/internal/store"
)

// Group commit. Every write transaction (InTx, and each write outside one)
// is handed to one committer goroutine that owns the writer connection.
// It takes every transaction waiting at that moment (up to maxBatch), runs
// them one after another in a single SQLite transaction, each under its
// own savepoint, and commits once: one WAL append and one fsync for the
// whole batch, where each used to pay its own. A transaction whose fn
// fails is rolled back to its savepoint and fails alone; the others still
// commit. A transaction's InTx returns only after the commit that holds it
// (or its failure), so what returned nil is as durable as before. When
// the writer is idle a lone transaction starts at once: batching adds no
// wait, it only gathers what queued up during the previous commit.
//
// The order of fns within a batch is the order they were queued, and each
// sees the writes of those before it, exactly as if they had committed one
// by one in that order; a failed commit fails them all.
const maxBatch = 128

type batchReq struct {
	ctx      context.Context
	fn       func(store.Tx) error
	err      error
	panicked any  // what fn panicked with; InTx panics again with it
	didPanic bool // fn panicked (even with nil)
	done     chan struct{}
}

type committer struct {
	db      *DB
	mu      sync.Mutex
	queue   []*batchReq
	wake    chan struct{} // one pending signal: the queue is not empty
	closed  bool
	stopped chan struct{}
	batches int // commits made (batches run)
	txs     int // transactions run in them (fn called)
}

// CommitStats says how many commits the store made and how many write
// transactions they held: txs ÷ commits is the batching factor.
func (db *DB) CommitStats() (commits, txs int64) {
	db.commit.mu.Lock()
	defer db.commit.mu.Unlock()
	return int64(db.commit.batches), int64(db.commit.txs)
}

var errClosed = errors.New("sqlite store is closed")

func newCommitter(db *DB) *committer {
	c := &committer{db: db, wake: make(chan struct{}, 1), stopped: make(chan struct{})}
	go c.run()
	return c
}

// do queues fn and waits until the batch holding it committed or failed.
// A context that ends while fn waits in the queue cancels it (fn does not
// run); once fn ran, do waits for the commit, so that a nil error always
// means committed.
func (c *committer) do(ctx context.Context, fn func(store.Tx) error) error {
	req := &batchReq{ctx: ctx, fn: fn, done: make(chan struct{})}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errClosed
	}
	c.queue = append(c.queue, req)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	<-req.done
	if req.didPanic {
		panic(req.panicked)
	}
	return req.err
}

// close stops taking transactions, lets the queued ones run and waits for
// the committer to end.
func (c *committer) close() {
	c.mu.Lock()
	already := c.closed
	c.closed = true
	c.mu.Unlock()
	if !already {
		close(c.wake)
	}
	<-c.stopped
}

func (c *committer) run() {
	defer close(c.stopped)
	for {
		c.mu.Lock()
		n := min(len(c.queue), maxBatch)
		reqs := c.queue[:n:n]
		c.queue = c.queue[n:]
		closed := c.closed
		c.mu.Unlock()
		if len(reqs) > 0 {
			c.runBatch(reqs)
			continue
		}
		if closed {
			return
		}
		if _, ok := <-c.wake; !ok {
			// Closed: drain what was queued before close, then stop.
			c.mu.Lock()
			rest := c.queue
			c.queue = nil
			c.mu.Unlock()
			for len(rest) > 0 {
				n := min(len(rest), maxBatch)
				c.runBatch(rest[:n])
				rest = rest[n:]
			}
			return
		}
	}
}

// runBatch runs reqs in one transaction and completes each.
func (c *committer) runBatch(reqs []*batchReq) {
	finish := func(err error) {
		for _, r := range reqs {
			if err != nil && r.err == nil && !r.didPanic {
				r.err = err
			}
			close(r.done)
		}
	}
	// The batch is not any one caller's: its own context must not end it.
	ctx := context.Background()
	sqlTx, err := c.db.write.BeginTx(ctx, nil)
	if err != nil {
		finish(fmt.Errorf("begin: %w", err))
		return
	}
	ts := txStmts{tx: sqlTx, cache: c.db.writeStmts}
	ran := 0
	for _, r := range reqs {
		if err := r.ctx.Err(); err != nil {
			r.err = err
			continue
		}
		t := &tx{queries: queries{r: ts, w: ts}, tx: sqlTx}
		t.owner = t
		if len(reqs) == 1 {
			// Alone in its transaction, it needs no savepoint: a failure
			// rolls the whole transaction back (ran stays 0).
			t.run(r)
		} else if err := t.savepoint(ctx, "batch", r); err != nil {
			// The transaction itself is broken (I/O error, …).
			_ = sqlTx.Rollback()
			finish(err)
			return
		}
		if r.err == nil && !r.didPanic {
			ran++
		}
	}
	if ran == 0 {
		_ = sqlTx.Rollback()
		finish(nil)
		return
	}
	err = sqlTx.Commit()
	c.mu.Lock()
	c.batches++
	c.txs += ran
	c.mu.Unlock()
	if err != nil {
		finish(fmt.Errorf("commit: %w", err))
		return
	}
	finish(nil)
}

// savepoint runs r.fn under a savepoint of its own: fn's error or panic
// undoes fn's writes only, and is recorded in r. The returned error is the
// savepoint machinery failing, which breaks the whole transaction.
func (t *tx) savepoint(ctx context.Context, name string, r *batchReq) (err error) {
	if _, err := t.tx.ExecContext(ctx, "SAVEPOINT "+name); err != nil {
		return fmt.Errorf("savepoint: %w", err)
	}
	failed := true
	defer func() {
		if failed {
			if _, rbErr := t.tx.ExecContext(ctx, "ROLLBACK TO "+name); rbErr != nil && err == nil {
				err = fmt.Errorf("rollback to savepoint: %w", rbErr)
			}
		}
		if _, relErr := t.tx.ExecContext(ctx, "RELEASE "+name); relErr != nil && err == nil {
			err = fmt.Errorf("release savepoint: %w", relErr)
		}
	}()
	t.run(r)
	failed = r.err != nil || r.didPanic
	return nil
}

// run calls r.fn and records its error or panic in r.
func (t *tx) run(r *batchReq) {
	defer func() {
		if p := recover(); p != nil {
			r.panicked, r.didPanic = p, true
		}
	}()
	r.err = r.fn(t)
}

// batchedWriter is the writer execer of the DB outside a transaction: a
// lone write is a transaction of its own, so it goes through the
// committer and shares a commit with its neighbours. Reads on the writer
// (a read that must see the latest write) use the connection directly.
type batchedWriter struct {
	db *DB
}

func (b batchedWriter) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	var res sql.Result
	err := b.db.InTx(ctx, func(t store.Tx) error {
		var err error
		res, err = t.(*tx).w.ExecContext(ctx, query, args...)
		return err
	})
	return res, err
}

func (b batchedWriter) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return b.db.writeStmts.QueryContext(ctx, query, args...)
}

func (b batchedWriter) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return b.db.writeStmts.QueryRowContext(ctx, query, args...)
}
