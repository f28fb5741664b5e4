package sqlite

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/store"
)

func queued(c *committer) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

func batches(c *committer) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.batches
}

// TestGroupCommit: transactions that queue while the writer is busy share
// one commit; one that fails or panics is undone alone; one whose context
// ended before its turn does not run; each returns only after its commit.
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	db := openTemp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Hold the writer with one transaction until the others are queued.
	release, running := make(chan struct{}), make(chan struct{})
	blockerDone := make(chan error, 1)
	go func() {
		blockerDone <- db.InTx(ctx, func(tx store.Tx) error {
			close(running)
			<-release
			return tx.CreateMachine(ctx, &deskrun.Machine{ID: "m_block", Name: "block", State: deskrun.MachineOffline})
		})
	}()
	<-running // the committer is inside the blocker's batch, alone
	before := batches(db.commit)

	const n = 40
	errs := make([]error, n)
	panics := make([]any, n)
	gone, cancelGone := context.WithCancel(ctx)
	ranGone := false
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { panics[i] = recover() }()
			c := ctx
			if i == 7 {
				c = gone
			}
			errs[i] = db.InTx(c, func(tx store.Tx) error {
				if i == 7 {
					ranGone = true
				}
				if err := tx.CreateMachine(ctx, &deskrun.Machine{ID: fmt.Sprintf("m_%d", i), Name: fmt.Sprint("n", i), State: deskrun.MachineOffline}); err != nil {
					return err
				}
				switch i {
				case 3:
					return errors.New("changed my mind") // its machine must be undone
				case 5:
					panic("boom") // likewise, and the panic reaches the caller
				}
				return nil
			})
		}()
	}
	// A plain write outside a transaction joins the batch too.
	wg.Add(1)
	var plainErr error
	go func() {
		defer wg.Done()
		plainErr = db.CreateMachine(ctx, &deskrun.Machine{ID: "m_plain", Name: "plain", State: deskrun.MachineOffline})
	}()
	require.Eventually(t, func() bool { return queued(db.commit) == n+1 }, 5*time.Second, time.Millisecond)
	cancelGone()
	close(release)
	wg.Wait()
	require.NoError(t, <-blockerDone)
	require.NoError(t, plainErr)

	// The blocker's commit, then everything that queued behind it in one.
	require.Equal(t, before+2, batches(db.commit), "41 queued transactions, one commit")
	for i := range n {
		_, err := db.GetMachine(ctx, fmt.Sprintf("m_%d", i))
		switch i {
		case 3:
			require.EqualError(t, errs[i], "changed my mind")
			require.Equal(t, deskrun.CodeNotFound, deskrun.ErrorCode(err), "a failed transaction's writes are undone")
		case 5:
			require.Equal(t, "boom", panics[i])
			require.Equal(t, deskrun.CodeNotFound, deskrun.ErrorCode(err), "a panicked transaction's writes are undone")
		case 7:
			require.ErrorIs(t, errs[i], context.Canceled)
			require.False(t, ranGone, "a cancelled transaction does not run")
			require.Equal(t, deskrun.CodeNotFound, deskrun.ErrorCode(err))
		default:
			require.NoError(t, errs[i], i)
			require.NoError(t, err, "machine %d committed", i)
		}
	}
	_, err := db.GetMachine(ctx, "m_plain")
	require.NoError(t, err)

	// A constraint error of a plain write is the store's error, alone.
	err = db.CreateMachine(ctx, &deskrun.Machine{ID: "m_plain2", Name: "plain", State: deskrun.MachineOffline})
	require.Equal(t, deskrun.CodeConflict, deskrun.ErrorCode(err), "%v", err)

	// Closed: the store refuses new transactions.
	require.NoError(t, db.Close())
	require.ErrorIs(t, db.InTx(ctx, func(store.Tx) error { return nil }), errClosed)
}

// TestLoneTransaction: a transaction alone in its batch runs without a
// savepoint; its error or panic still undoes all its writes.
func TestLoneTransaction(t *testing.T) {
	t.Parallel()
	db := openTemp(t)
	ctx := context.Background()
	write := func(id string) func(store.Tx) error {
		return func(tx store.Tx) error {
			return tx.CreateMachine(ctx, &deskrun.Machine{ID: id, Name: id, State: deskrun.MachineOffline})
		}
	}
	err := db.InTx(ctx, func(tx store.Tx) error {
		if err := write("m_err")(tx); err != nil {
			return err
		}
		return errors.New("undo")
	})
	require.EqualError(t, err, "undo")
	_, err = db.GetMachine(ctx, "m_err")
	require.Equal(t, deskrun.CodeNotFound, deskrun.ErrorCode(err))

	require.PanicsWithValue(t, "boom", func() {
		_ = db.InTx(ctx, func(tx store.Tx) error {
			_ = write("m_panic")(tx)
			panic("boom")
		})
	})
	_, err = db.GetMachine(ctx, "m_panic")
	require.Equal(t, deskrun.CodeNotFound, deskrun.ErrorCode(err))

	// The writer is still usable, and a nested savepoint inside a lone
	// transaction works.
	require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
		if err := write("m_ok")(tx); err != nil {
			return err
		}
		_ = tx.InTx(ctx, func(tx store.Tx) error {
			_ = write("m_inner")(tx)
			return errors.New("inner undone")
		})
		return nil
	}))
	_, err = db.GetMachine(ctx, "m_ok")
	require.NoError(t, err)
	_, err = db.GetMachine(ctx, "m_inner")
	require.Equal(t, deskrun.CodeNotFound, deskrun.ErrorCode(err))
}
