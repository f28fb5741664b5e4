package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/store"
	"github.com/deskrun/deskrun/internal/store/storetest"
)

// openTemp opens a fresh file in t.TempDir, migrated, closed when t ends.
func openTemp(t testing.TB, opts ...Option) *DB {
	t.Helper()
	db, err := Open(context.Background(), filepath.Join(t.TempDir(), "deskrun.db"), append(opts, WithAutoMigrate())...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	return db
}

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) store.Store { return openTemp(t) })
}

func TestConformanceMemory(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) store.Store {
		db, err := Open(t.Context(), ":memory:", WithAutoMigrate())
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, db.Close()) })
		return db
	})
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"", "a?b", filepath.Join(t.TempDir(), "missing", "dir", "deskrun.db")} {
		db, err := Open(t.Context(), path)
		require.Error(t, err, path)
		require.Nil(t, db)
	}
}

func TestOpenDoesNotMigrate(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "deskrun.db")
	db, err := Open(ctx, path)
	require.NoError(t, err)
	defer db.Close()

	_, err = db.GetMachine(ctx, "m_1")
	require.ErrorContains(t, err, "no such table")
	require.Equal(t, deskrun.CodeInternal, deskrun.ErrorCode(err))

	applied, err := db.Migrate(ctx)
	require.NoError(t, err)
	// Every embedded migration, in order (derived, so that migrations
	// added in parallel branches do not each edit this line).
	all, err := loadMigrations(migrationFS)
	require.NoError(t, err)
	var want []int
	for _, m := range all {
		want = append(want, m.version)
	}
	require.Equal(t, want, applied)
	require.Equal(t, 1, applied[0])
	applied, err = db.Migrate(ctx)
	require.NoError(t, err)
	require.Empty(t, applied, "migrations are idempotent")

	_, err = db.GetMachine(ctx, "m_1")
	require.True(t, deskrun.IsCode(err, deskrun.CodeNotFound), "got %v", err)
}

func TestReopenKeepsData(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "deskrun.db")
	db, err := Open(ctx, path, WithAutoMigrate())
	require.NoError(t, err)
	m := &deskrun.Machine{ID: "m_1", Name: "desk-01", State: deskrun.MachineOnline, SigningKey: []byte{1, 2, 3}, Sessions: "exclusive"}
	require.NoError(t, db.CreateMachine(ctx, m))
	require.NoError(t, db.Close())

	db, err = Open(ctx, path)
	require.NoError(t, err)
	defer db.Close()
	applied, err := db.Migrate(ctx)
	require.NoError(t, err)
	require.Empty(t, applied)
	got, err := db.GetMachine(ctx, "m_1")
	require.NoError(t, err)
	require.Equal(t, m, got)
}

func TestMigrateInOrderAndAtomically(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "deskrun.db"))
	require.NoError(t, err)
	defer db.Close()

	fsys := fstest.MapFS{
		// 0002 depends on 0001: applied out of order it fails.
		"migrations/0002_b.sql": {Data: []byte(`INSERT INTO a (x) VALUES (2);`)},
		"migrations/0001_a.sql": {Data: []byte(`CREATE TABLE a (x INTEGER); INSERT INTO a (x) VALUES (1);`)},
	}
	applied, err := db.migrate(ctx, fsys)
	require.NoError(t, err)
	require.Equal(t, []int{1, 2}, applied)

	// A failing migration leaves neither its changes nor its record.
	fsys["migrations/0003_c.sql"] = &fstest.MapFile{Data: []byte(`INSERT INTO a (x) VALUES (3); INSERT INTO missing VALUES (1);`)}
	applied, err = db.migrate(ctx, fsys)
	require.ErrorContains(t, err, "0003_c.sql")
	require.Empty(t, applied)
	var n, latest int
	require.NoError(t, db.write.QueryRowContext(ctx, `SELECT COUNT(*) FROM a`).Scan(&n))
	require.Equal(t, 2, n)
	require.NoError(t, db.write.QueryRowContext(ctx, `SELECT MAX(version) FROM schema_migrations`).Scan(&latest))
	require.Equal(t, 2, latest)

	// Fixed, it applies.
	fsys["migrations/0003_c.sql"] = &fstest.MapFile{Data: []byte(`INSERT INTO a (x) VALUES (3);`)}
	applied, err = db.migrate(ctx, fsys)
	require.NoError(t, err)
	require.Equal(t, []int{3}, applied)
}

func TestMigrateRefusesNewerSchema(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := openTemp(t)
	_, err := db.write.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (9999, 0)`)
	require.NoError(t, err)
	_, err = db.Migrate(ctx)
	require.ErrorContains(t, err, "schema version 9999")
}

func TestLoadMigrationsRejectsBadNames(t *testing.T) {
	t.Parallel()
	for name, fsys := range map[string]fstest.MapFS{
		"no number": {"migrations/init.sql": {}},
		"duplicate": {"migrations/0001_a.sql": {}, "migrations/001_b.sql": {}},
	} {
		_, err := loadMigrations(fsys)
		require.Error(t, err, name)
	}
	ms, err := loadMigrations(migrationFS)
	require.NoError(t, err)
	require.Equal(t, 1, ms[0].version)
}

func TestPragmas(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		opts []Option
		sync int
	}{
		{nil, 2}, // FULL
		{[]Option{WithSynchronousNormal()}, 1},
	} {
		db := openTemp(t, append(tc.opts, WithBusyTimeout(1234*time.Millisecond))...)
		for name, pool := range map[string]*sql.DB{"write": db.write, "read": db.read} {
			var mode string
			var sync, fk, busy int
			require.NoError(t, pool.QueryRow(`PRAGMA journal_mode`).Scan(&mode))
			require.NoError(t, pool.QueryRow(`PRAGMA synchronous`).Scan(&sync))
			require.NoError(t, pool.QueryRow(`PRAGMA foreign_keys`).Scan(&fk))
			require.NoError(t, pool.QueryRow(`PRAGMA busy_timeout`).Scan(&busy))
			require.Equal(t, "wal", mode, name)
			require.Equal(t, tc.sync, sync, name)
			require.Equal(t, 1, fk, name)
			require.Equal(t, 1234, busy, name)
		}
		_, err := db.read.Exec(`DELETE FROM machines`)
		require.Error(t, err, "the read pool is read-only")
	}
}

// TestConcurrentWriters checks that writers queue for the writer instead
// of failing with SQLITE_BUSY, while readers keep reading.
func TestConcurrentWriters(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := openTemp(t)
	require.NoError(t, db.CreateMachine(ctx, &deskrun.Machine{ID: "m_1", Name: "desk-01"}))

	const writers, each = 8, 200
	errs := make(chan error, writers*each+writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				j := &deskrun.Job{ID: fmt.Sprintf("j_%d_%03d", w, i), MachineID: "m_1", Kind: deskrun.JobNoop, State: deskrun.JobQueued}
				var err error
				if i%2 == 0 {
					err = db.CreateJob(ctx, j)
				} else {
					err = db.InTx(ctx, func(tx store.Tx) error { return tx.CreateJob(ctx, j) })
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	done := make(chan struct{})
	var readers sync.WaitGroup
	for range 2 {
		readers.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				if _, err := db.ListJobs(ctx, store.JobFilter{MachineID: "m_1", Limit: 10}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(done)
	readers.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	js, err := db.ListJobs(ctx, store.JobFilter{Limit: writers * each * 2})
	require.NoError(t, err)
	require.Len(t, js, writers*each)
}

func TestInterpretError(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := openTemp(t)
	_, err := db.write.ExecContext(ctx, `INSERT INTO machines (id, name) VALUES ('m_1', 'desk-01')`)
	require.NoError(t, err)
	driverErr := func(query string) error {
		_, err := db.write.ExecContext(ctx, query)
		require.Error(t, err)
		return err
	}

	for _, tc := range []struct {
		name string
		err  error
		s    subject
		code string
		msg  string
	}{
		{"no rows by id", sql.ErrNoRows, subject{kind: "machine", id: "m_x"}, deskrun.CodeNotFound, `machine "m_x" not found`},
		{"no rows by name", sql.ErrNoRows, subject{kind: "machine", name: "x"}, deskrun.CodeNotFound, `machine named "x" not found`},
		{"wrapped no rows", fmt.Errorf("scan: %w", sql.ErrNoRows), subject{kind: "job", id: "j_1"}, deskrun.CodeNotFound, `job "j_1" not found`},
		{"unique name", driverErr(`INSERT INTO machines (id, name) VALUES ('m_2', 'desk-01')`),
			subject{kind: "machine", id: "m_2", name: "desk-01"}, deskrun.CodeConflict, `a machine named "desk-01" already exists`},
		{"primary key", driverErr(`INSERT INTO machines (id, name) VALUES ('m_1', 'desk-02')`),
			subject{kind: "machine", id: "m_1", name: "desk-02"}, deskrun.CodeConflict, `a machine with id "m_1" already exists`},
		{"foreign key", driverErr(`INSERT INTO jobs (id, machine_id, kind, state) VALUES ('j_1', 'm_x', 'noop', 'queued')`),
			subject{kind: "job", id: "j_1", ref: `machine "m_x"`}, deskrun.CodeNotFound, `machine "m_x" not found`},
		{"other", driverErr(`SELECT * FROM nowhere`), subject{op: "list nowhere"}, deskrun.CodeInternal, "list nowhere: "},
		{"domain error kept", deskrun.Errorf(deskrun.CodeInvalid, "bad"), subject{op: "x"}, deskrun.CodeInvalid, "bad"},
	} {
		got := interpretError(tc.err, tc.s)
		require.Equal(t, tc.code, deskrun.ErrorCode(got), tc.name)
		require.ErrorContains(t, got, tc.msg, tc.name)
		if tc.code == deskrun.CodeInternal {
			require.True(t, errors.Is(got, tc.err), "%s: the driver error is wrapped", tc.name)
		}
	}
	require.NoError(t, interpretError(nil, subject{}))
}

// BenchmarkCreateFinishJob measures the write path of one job: create it,
// then finish it, each its own durable commit.
func BenchmarkCreateFinishJob(b *testing.B) {
	for _, bc := range []struct {
		name string
		opts []Option
	}{
		{"sync=FULL", nil},
		{"sync=NORMAL", []Option{WithSynchronousNormal()}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := b.Context()
			db := openTemp(b, bc.opts...)
			require.NoError(b, db.CreateMachine(ctx, &deskrun.Machine{ID: "m_1", Name: "desk-01"}))
			now := time.Now()
			for i := 0; b.Loop(); i++ {
				j := &deskrun.Job{ID: fmt.Sprintf("j_%09d", i), MachineID: "m_1", Kind: deskrun.JobNoop,
					State: deskrun.JobQueued, CreatedAt: now, UpdatedAt: now}
				if err := db.CreateJob(ctx, j); err != nil {
					b.Fatal(err)
				}
				if ok, err := db.FinishJob(ctx, j.ID, deskrun.JobSucceeded, []byte(`{}`), nil, now); err != nil || !ok {
					b.Fatal(ok, err)
				}
			}
		})
	}
}

// BenchmarkReadWhileWriting measures why reads have their own pool: with
// one pool, a read waits behind every write's fsync.
func BenchmarkReadWhileWriting(b *testing.B) {
	for _, bc := range []struct {
		name    string
		onePool bool
	}{
		{"pools=split", false},
		{"pools=one", true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := b.Context()
			db := openTemp(b, func(c *config) { c.onePool = bc.onePool })
			require.NoError(b, db.CreateMachine(ctx, &deskrun.Machine{ID: "m_1", Name: "desk-01"}))
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					_ = db.CreateJob(ctx, &deskrun.Job{ID: fmt.Sprintf("j_%09d", i), MachineID: "m_1", Kind: deskrun.JobNoop, State: deskrun.JobQueued})
				}
			})
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := db.GetMachine(ctx, "m_1"); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			close(stop)
			wg.Wait()
		})
	}
}

// TestConnectionWritesAreAtomic makes the second half of a connection
// write (its credentials) fail, which the conformance suite cannot do
// through the interface, and checks that the first half is undone too, on
// its own and inside a caller's transaction.
func TestConnectionWritesAreAtomic(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := openTemp(t)
	_, err := db.write.ExecContext(ctx, `CREATE TRIGGER refuse_bad BEFORE INSERT ON connection_credentials
		WHEN NEW.machine_id = 'm_bad' BEGIN SELECT RAISE(ABORT, 'refused by test'); END`)
	require.NoError(t, err)
	creds := func(machines ...string) []deskrun.SealedCredential {
		var cs []deskrun.SealedCredential
		for _, m := range machines {
			cs = append(cs, deskrun.SealedCredential{MachineID: m, KeyID: "sk", Ciphertext: []byte("sealed for " + m)})
		}
		return cs
	}
	missing := func(s store.Tx, id string) {
		t.Helper()
		_, err := s.GetConnection(ctx, id)
		require.True(t, deskrun.IsCode(err, deskrun.CodeNotFound), "got %v", err)
	}

	bad := &deskrun.Connection{ID: "c_bad", Name: "bad", Credentials: creds("m_a", "m_bad")}
	require.ErrorContains(t, db.CreateConnection(ctx, bad), "refused by test")
	missing(db, "c_bad")

	good := &deskrun.Connection{ID: "c_good", Name: "good", Username: "u1", Credentials: creds("m_a")}
	require.NoError(t, db.CreateConnection(ctx, good))
	edit := *good
	edit.Username, edit.Credentials = "u2", creds("m_b", "m_bad")
	require.ErrorContains(t, db.UpdateConnection(ctx, &edit), "refused by test")
	got, err := db.GetConnection(ctx, good.ID)
	require.NoError(t, err)
	require.Equal(t, good, got, "a failed update leaves the row and the old credentials")

	// Inside a transaction the failed create undoes only itself.
	require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
		require.Error(t, tx.CreateConnection(ctx, bad))
		missing(tx, "c_bad")
		return tx.CreateConnection(ctx, &deskrun.Connection{ID: "c_next", Name: "next", Credentials: creds("m_a")})
	}))
	missing(db, "c_bad")
	_, err = db.GetConnection(ctx, "c_next")
	require.NoError(t, err)
}

// TestRunNotTerminalMatchesDomain keeps the SQL list of terminal run
// states in step with deskrun.RunState.Terminal.
func TestRunNotTerminalMatchesDomain(t *testing.T) {
	t.Parallel()
	for _, st := range []deskrun.RunState{deskrun.RunQueued, deskrun.RunAssigned, deskrun.RunLoggingOn, deskrun.RunRunning,
		deskrun.RunSucceeded, deskrun.RunFailed, deskrun.RunCancelled, deskrun.RunTimedOut} {
		require.Equal(t, st.Terminal(), strings.Contains(runNotTerminal, "'"+string(st)+"'"), st)
	}
}
