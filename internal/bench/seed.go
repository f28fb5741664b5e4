package bench

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the store's driver

	"github.com/deskrun/deskrun"
)

// History is what seeded runs refer to: a real machine, connection and
// desktop-flow version of the world, so the server's queries meet them
// exactly as they would meet a year of real history.
type History struct {
	MachineID    string
	ConnectionID string
	Flow         string
	Version      int
	Digest       string
}

// seedPayload stands for a desktop job's payload (the sealed credential,
// inputs and manifest come to about this much).
var seedPayload = `{"pad":"` + strings.Repeat("x", 480) + `"}`

// SeedRuns appends n finished runs, each with its finished job, to the
// SQLite store at path, written straight into the tables while the server
// is stopped (a million runs through the API would take hours). The runs
// are spread over the 30 days before now, older than anything the
// scenario then creates, as real history is; their IDs have the server's
// time-ordered shape. One transaction per 50,000 runs.
func SeedRuns(ctx context.Context, path string, n int, h History) error {
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)&_pragma=synchronous(NORMAL)&_txlock=immediate")
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	now := time.Now().Add(-time.Hour)
	step := 30 * 24 * time.Hour / time.Duration(max(n, 1))
	const batch = 50_000
	for done := 0; done < n; done += batch {
		if err := seedBatch(ctx, db, done, min(batch, n-done), n, now, step, h); err != nil {
			return fmt.Errorf("seed runs: %w", err)
		}
	}
	return nil
}

func seedBatch(ctx context.Context, db *sql.DB, from, count, n int, now time.Time, step time.Duration, h History) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	job, err := tx.PrepareContext(ctx, `INSERT INTO jobs (id, machine_id, kind, payload, state, result, created_at, updated_at, finished_at)
		VALUES (?, ?, 'desktop', ?, 'succeeded', ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	run, err := tx.PrepareContext(ctx, `INSERT INTO runs (id, flow, version, digest, connection_id, machine_id, job_id, inputs, state,
		outputs, exit_code, timings, created_at, assigned_at, logon_at, started_at, finished_at, updated_at, queue_deadline)
		VALUES (?, ?, ?, ?, ?, ?, ?, '{}', 'succeeded', '{"t":"1"}', 0, '{"logon":5000,"session":500,"spawn":1000}', ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	for i := from; i < from+count; i++ {
		at := now.Add(-time.Duration(n-i) * step)
		jid, rid := deskrun.NewID("j", at), deskrun.NewID("r", at)
		t := at.UnixNano()
		ms := int64(time.Millisecond)
		if _, err := job.ExecContext(ctx, jid, h.MachineID, seedPayload, `{"exit_code":0}`, t, t+40*ms, t+40*ms); err != nil {
			return err
		}
		if _, err := run.ExecContext(ctx, rid, h.Flow, h.Version, h.Digest, h.ConnectionID, h.MachineID, jid,
			t, t+ms, t+3*ms, t+20*ms, t+40*ms, t+40*ms, t+int64(12*time.Hour)); err != nil {
			return err
		}
	}
	return tx.Commit()
}
