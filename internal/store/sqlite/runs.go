package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/store"
)

const runColumns = `id, flow, version, digest, connection_id, machine_id, job_id, priority, inputs, state,
	placement_reason, screenshot_requested, outputs, exit_code, error, timings,
	created_at, assigned_at, logon_at, started_at, finished_at, updated_at, queue_deadline`

// runSelect reads a run's columns and whether it has a screenshot (the
// PNG itself stays in run_screenshots until someone asks for it).
const runSelect = `SELECT ` + runColumns + `,
	EXISTS (SELECT 1 FROM run_screenshots s WHERE s.run_id = runs.id) FROM runs`

// runNotTerminal is the SQL condition that a run is still live, the
// counterpart of deskrun.RunState.Terminal. UpdateRun carries it in its
// WHERE clause, so the check and the write are one statement.
const runNotTerminal = `state NOT IN ('succeeded', 'failed', 'cancelled', 'timed-out')`

// DefaultRunLogLimit is the page ReadRunLog returns when limit is 0 or less.
const DefaultRunLogLimit = 1000

func scanRun(s scanner) (*deskrun.Run, error) {
	var (
		r                                           deskrun.Run
		priority, state                             string
		inputs, outputs, runErr, timings            sql.NullString
		screenshot                                  bool
		exitCode                                    sql.NullInt64
		created, assigned, logon, started, fin, upd int64
		queueDeadline                               int64
	)
	err := s.Scan(&r.ID, &r.Flow, &r.Version, &r.Digest, &r.ConnectionID, &r.MachineID, &r.JobID, &priority,
		&inputs, &state, &r.PlacementReason, &screenshot, &outputs, &exitCode, &runErr, &timings,
		&created, &assigned, &logon, &started, &fin, &upd, &queueDeadline, &r.HasScreenshot)
	if err != nil {
		return nil, err
	}
	r.Priority = deskrun.Priority(priority)
	r.State = deskrun.RunState(state)
	r.Screenshot = screenshot
	r.Inputs = rawJSON(inputs)
	r.Outputs = rawJSON(outputs)
	r.Timings = rawJSON(timings)
	if exitCode.Valid {
		code := int(exitCode.Int64)
		r.ExitCode = &code
	}
	if r.Error, err = decodeError(runErr); err != nil {
		return nil, fmt.Errorf("decode error of run %s: %w", r.ID, err)
	}
	r.CreatedAt = fromNanos(created)
	r.AssignedAt = fromNanos(assigned)
	r.LogonAt = fromNanos(logon)
	r.StartedAt = fromNanos(started)
	r.FinishedAt = fromNanos(fin)
	r.UpdatedAt = fromNanos(upd)
	r.QueueDeadline = fromNanos(queueDeadline)
	return &r, nil
}

// exitCode stores a nil exit code as NULL.
func exitCode(c *int) any {
	if c == nil {
		return nil
	}
	return int64(*c)
}

// CreateRun stores a new run. Its id must come from deskrun.NewID, which
// sorts by time: the queue's age order is its ids' order.
func (q *queries) CreateRun(ctx context.Context, r *deskrun.Run) error {
	s := subject{op: "create run", kind: "run", id: r.ID}
	if r.ID == "" || r.Flow == "" || r.State == "" {
		return deskrun.Errorf(deskrun.CodeInvalid, "a run needs an id, a flow and a state")
	}
	if r.Priority != deskrun.PriorityHigh && r.Priority != deskrun.PriorityNormal {
		return deskrun.Errorf(deskrun.CodeInvalid, "run %q: priority must be %q or %q, not %q",
			r.ID, deskrun.PriorityHigh, deskrun.PriorityNormal, r.Priority)
	}
	runErr, err := errorJSON(r.Error)
	if err != nil {
		return fmt.Errorf("%s: %w", s.op, err)
	}
	_, err = q.w.ExecContext(ctx, `INSERT INTO runs (`+runColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.ID, r.Flow, r.Version, r.Digest, r.ConnectionID, r.MachineID, r.JobID, string(r.Priority),
		text(r.Inputs), string(r.State), r.PlacementReason, r.Screenshot, text(r.Outputs), exitCode(r.ExitCode),
		runErr, text(r.Timings), nanos(r.CreatedAt), nanos(r.AssignedAt), nanos(r.LogonAt), nanos(r.StartedAt),
		nanos(r.FinishedAt), nanos(r.UpdatedAt), nanos(r.QueueDeadline))
	return interpretError(err, s)
}

func (q *queries) GetRun(ctx context.Context, id string) (*deskrun.Run, error) {
	r, err := scanRun(q.r.QueryRowContext(ctx, runSelect+` WHERE id = ?`, id))
	if err != nil {
		return nil, interpretError(err, subject{op: "get run", kind: "run", id: id})
	}
	return r, nil
}

// GetRunByJob finds the run a job carries. The empty job id, which every
// run not yet assigned has, names no run.
func (q *queries) GetRunByJob(ctx context.Context, jobID string) (*deskrun.Run, error) {
	notFound := deskrun.Errorf(deskrun.CodeNotFound, "no run for job %q", jobID)
	if jobID == "" {
		return nil, notFound
	}
	r, err := scanRun(q.r.QueryRowContext(ctx, runSelect+` WHERE job_id = ?
		ORDER BY id DESC LIMIT 1`, jobID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound
	}
	if err != nil {
		return nil, interpretError(err, subject{op: "get run by job"})
	}
	return r, nil
}

// ListRuns returns runs newest first (by id); every field of f that is
// not empty filters; a Limit of 0 or less means DefaultJobLimit.
func runFilter(f store.RunFilter) *filter {
	var w filter
	in(&w, "state", f.States)
	w.eq("flow", f.Flow)
	w.eq("machine_id", f.MachineID)
	w.eq("connection_id", f.ConnectionID)
	return &w
}

func (q *queries) ListRuns(ctx context.Context, f store.RunFilter) ([]*deskrun.Run, error) {
	query, args := runFilter(f).query(runSelect, `id DESC`, f.Limit)
	rs, err := queryAll(ctx, q.r, scanRun, query, args...)
	return rs, interpretError(err, subject{op: "list runs"})
}

// CountRuns counts the runs f selects (its Limit is ignored).
func (q *queries) CountRuns(ctx context.Context, f store.RunFilter) (int, error) {
	w := runFilter(f)
	query := `SELECT COUNT(*) FROM runs`
	if len(w.conds) > 0 {
		query += ` WHERE ` + strings.Join(w.conds, " AND ")
	}
	var n int
	err := q.r.QueryRowContext(ctx, query, w.args...).Scan(&n)
	return n, interpretError(err, subject{op: "count runs"})
}

// ListQueuedRuns returns the queued runs f selects in placement order:
// high priority first, then oldest (smallest id) first. A limit of 0 or
// less means DefaultJobLimit. With f.Priority the order is the id's alone,
// which the index on (state, priority, id) walks without sorting, so a
// page costs the rows it returns (plus those ConnectionIDs skips).
func (q *queries) ListQueuedRuns(ctx context.Context, f store.QueueFilter) ([]*deskrun.Run, error) {
	w := &filter{conds: []string{"state = ?"}, args: []any{string(deskrun.RunQueued)}}
	w.eq("priority", string(f.Priority))
	if f.AfterID != "" {
		w.conds, w.args = append(w.conds, "id > ?"), append(w.args, f.AfterID)
	}
	in(w, "connection_id", f.ConnectionIDs)
	if !f.DeadlineBy.IsZero() {
		w.conds, w.args = append(w.conds, "queue_deadline > 0", "queue_deadline <= ?"), append(w.args, nanos(f.DeadlineBy))
	}
	order := `id ASC`
	if f.Priority == "" {
		order = `(priority = '` + string(deskrun.PriorityHigh) + `') DESC, id ASC`
	}
	query, args := w.query(runSelect, order, f.Limit)
	rs, err := queryAll(ctx, q.r, scanRun, query, args...)
	return rs, interpretError(err, subject{op: "list queued runs"})
}

// CountQueuedRuns reads only the index on (state, connection_id,
// placement_reason), never a run's row.
func (q *queries) CountQueuedRuns(ctx context.Context) ([]store.QueueCount, error) {
	cs, err := queryAll(ctx, q.r, func(s scanner) (store.QueueCount, error) {
		var c store.QueueCount
		err := s.Scan(&c.ConnectionID, &c.Reason, &c.Count)
		return c, err
	}, `SELECT connection_id, placement_reason, COUNT(*) FROM runs WHERE state = ?
		GROUP BY connection_id, placement_reason`, string(deskrun.RunQueued))
	return cs, interpretError(err, subject{op: "count queued runs"})
}

// SetPlacementReason is one UPDATE over the index on (state,
// connection_id, placement_reason): runs that already have the reason are
// skipped in the index and never written.
func (q *queries) SetPlacementReason(ctx context.Context, connectionID, reason string, at time.Time) ([]string, error) {
	ids, err := queryAll(ctx, q.w, func(s scanner) (string, error) {
		var id string
		err := s.Scan(&id)
		return id, err
	}, `UPDATE runs SET placement_reason = ?, updated_at = ?
		WHERE state = ? AND connection_id = ? AND placement_reason <> ? RETURNING id`,
		reason, nanos(at), string(deskrun.RunQueued), connectionID, reason)
	return ids, interpretError(err, subject{op: "set placement reason"})
}

// NextQueueDeadline reads the index on (state, queue_deadline).
func (q *queries) NextQueueDeadline(ctx context.Context, after time.Time) (time.Time, error) {
	var next sql.NullInt64
	err := q.r.QueryRowContext(ctx, `SELECT MIN(queue_deadline) FROM runs WHERE state = ? AND queue_deadline > ?`,
		string(deskrun.RunQueued), nanos(after)).Scan(&next)
	if err != nil {
		return time.Time{}, interpretError(err, subject{op: "next queue deadline"})
	}
	return fromNanos(next.Int64), nil
}

// ActiveRunLoad is one grouped read of the runs in flight (few: at most
// the slots of every machine) joined to their connections.
func (q *queries) ActiveRunLoad(ctx context.Context) (*store.RunLoad, error) {
	type row struct {
		machine string
		user    sql.NullString
		n       int
	}
	rows, err := queryAll(ctx, q.r, func(s scanner) (row, error) {
		var r row
		err := s.Scan(&r.machine, &r.user, &r.n)
		return r, err
	}, `SELECT r.machine_id, CASE WHEN c.run_mode = ? THEN c.username END AS u, COUNT(*)
		FROM runs r LEFT JOIN connections c ON c.id = r.connection_id
		WHERE r.state IN (?, ?, ?) GROUP BY r.machine_id, u`,
		string(deskrun.RunUnattended), string(deskrun.RunAssigned), string(deskrun.RunLoggingOn), string(deskrun.RunRunning))
	if err != nil {
		return nil, interpretError(err, subject{op: "active run load"})
	}
	load := &store.RunLoad{Active: map[string]int{}, Unattended: map[store.MachineUser]bool{}}
	for _, r := range rows {
		load.Active[r.machine] += r.n
		if r.user.Valid {
			load.Unattended[store.MachineUser{MachineID: r.machine, Username: r.user.String}] = true
		}
	}
	return load, nil
}

// runUpdate writes the mutable fields of a run; its WHERE clause is the
// caller's.
const runUpdate = `UPDATE runs SET state = ?, machine_id = ?, job_id = ?, placement_reason = ?,
	outputs = ?, exit_code = ?, error = ?, timings = ?, assigned_at = ?, logon_at = ?, started_at = ?,
	finished_at = ?, updated_at = ?, queue_deadline = ? WHERE id = ? AND `

func (q *queries) updateRun(ctx context.Context, r *deskrun.Run, cond string, s subject) (bool, error) {
	runErr, err := errorJSON(r.Error)
	if err != nil {
		return false, fmt.Errorf("%s: %w", s.op, err)
	}
	res, err := q.w.ExecContext(ctx, runUpdate+cond,
		string(r.State), r.MachineID, r.JobID, r.PlacementReason, text(r.Outputs), exitCode(r.ExitCode), runErr,
		text(r.Timings), nanos(r.AssignedAt), nanos(r.LogonAt), nanos(r.StartedAt), nanos(r.FinishedAt),
		nanos(r.UpdatedAt), nanos(r.QueueDeadline), r.ID)
	return q.changedLive(ctx, "runs", res, err, s)
}

// UpdateRun writes the mutable fields of r in one conditional UPDATE: of
// two callers racing to finish the same run exactly one gets true. The
// flow, version, digest, connection, priority, inputs, screenshot request
// and creation time are not written.
func (q *queries) UpdateRun(ctx context.Context, r *deskrun.Run) (bool, error) {
	return q.updateRun(ctx, r, runNotTerminal, subject{op: "update run", kind: "run", id: r.ID})
}

// AssignRun is UpdateRun conditioned on the run being queued, and the
// job's insert, in one transaction (a savepoint inside the caller's).
func (q *queries) AssignRun(ctx context.Context, r *deskrun.Run, j *deskrun.Job) (bool, error) {
	s := subject{op: "assign run", kind: "run", id: r.ID}
	if r.State != deskrun.RunAssigned || r.JobID == "" || r.JobID != j.ID || r.MachineID != j.MachineID {
		return false, deskrun.Errorf(deskrun.CodeInvalid, "run %q: an assigned run names its job and the job's machine", r.ID)
	}
	var assigned bool
	err := q.atomic(ctx, func(q *queries) error {
		ok, err := q.updateRun(ctx, r, `state = '`+string(deskrun.RunQueued)+`'`, s)
		if err != nil || !ok {
			return err
		}
		if err := q.CreateJob(ctx, j); err != nil {
			return err
		}
		assigned = true
		return nil
	})
	if err != nil {
		return false, err
	}
	return assigned, nil
}

// AppendRunLog stores chunks in one transaction (a savepoint inside the
// caller's); a chunk whose seq the run has already is skipped, so a batch
// resent after a reconnect stores each chunk once. A missing run is
// CodeNotFound.
func (q *queries) AppendRunLog(ctx context.Context, runID string, chunks []deskrun.LogChunk) error {
	s := subject{op: "append run log", kind: "run", id: runID, ref: fmt.Sprintf("run %q", runID)}
	if len(chunks) == 0 {
		return nil
	}
	err := q.atomic(ctx, func(q *queries) error {
		for _, c := range chunks {
			if _, err := q.w.ExecContext(ctx, `INSERT INTO run_logs (run_id, seq, stream, data, at)
				VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, seq) DO NOTHING`,
				runID, c.Seq, c.Stream, blob(c.Data), nanos(c.At)); err != nil {
				return err
			}
		}
		return nil
	})
	return interpretError(err, s)
}

// ReadRunLog returns up to limit (0 or less: DefaultRunLogLimit) chunks
// with Seq > afterSeq, in Seq order. It reads the run and its chunks in one
// statement, so a missing run is CodeNotFound and a run without (further)
// output an empty page.
func (q *queries) ReadRunLog(ctx context.Context, runID string, afterSeq int64, limit int) ([]deskrun.LogChunk, error) {
	s := subject{op: "read run log", kind: "run", id: runID}
	rows, err := q.r.QueryContext(ctx, `SELECT l.seq, l.stream, l.data, l.at
		FROM runs r LEFT JOIN run_logs l ON l.run_id = r.id AND l.seq > ?
		WHERE r.id = ? ORDER BY l.seq LIMIT ?`, afterSeq, runID, limitOr(limit, DefaultRunLogLimit))
	if err != nil {
		return nil, interpretError(err, s)
	}
	defer rows.Close()
	var (
		chunks []deskrun.LogChunk
		found  bool
	)
	for rows.Next() {
		found = true
		var (
			seq, at sql.NullInt64
			stream  sql.NullString
			data    []byte
		)
		if err := rows.Scan(&seq, &stream, &data, &at); err != nil {
			return nil, interpretError(err, s)
		}
		if !seq.Valid {
			continue // the run's row without a chunk
		}
		chunks = append(chunks, deskrun.LogChunk{Seq: seq.Int64, Stream: stream.String, Data: nonEmpty(data), At: fromNanos(at.Int64)})
	}
	if err := rows.Err(); err != nil {
		return nil, interpretError(err, s)
	}
	if !found {
		return nil, interpretError(sql.ErrNoRows, s)
	}
	return chunks, nil
}

// SaveRunScreenshot stores a run's screenshot, replacing the one it had.
// The run must exist (CodeNotFound otherwise) and png must not be empty.
func (q *queries) SaveRunScreenshot(ctx context.Context, runID string, png []byte) error {
	s := subject{op: "save run screenshot", kind: "run", id: runID, ref: fmt.Sprintf("run %q", runID)}
	if len(png) == 0 {
		return deskrun.Errorf(deskrun.CodeInvalid, "run %q: the screenshot is empty", runID)
	}
	_, err := q.w.ExecContext(ctx, `INSERT INTO run_screenshots (run_id, png, at) VALUES (?, ?, ?)
		ON CONFLICT (run_id) DO UPDATE SET png = excluded.png, at = excluded.at`,
		runID, png, time.Now().UnixNano())
	return interpretError(err, s)
}

// GetRunScreenshot returns a run's screenshot; a run without one (or no
// run) is CodeNotFound.
func (q *queries) GetRunScreenshot(ctx context.Context, runID string) ([]byte, error) {
	var png []byte
	err := q.r.QueryRowContext(ctx, `SELECT png FROM run_screenshots WHERE run_id = ?`, runID).Scan(&png)
	if err != nil {
		return nil, interpretError(err, subject{op: "get run screenshot", kind: "screenshot of run", id: runID})
	}
	return png, nil
}
