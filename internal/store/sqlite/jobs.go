package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/store"
)

const jobColumns = `id, machine_id, kind, payload, state, result, error, progress,
	created_at, updated_at, lease_expires, finished_at`

// notTerminal is the SQL condition that a job is still live. Every write
// that must not touch a finished job carries it in its WHERE clause, so the
// check and the write are one statement.
const notTerminal = `state NOT IN ('succeeded', 'failed', 'cancelled')`

func scanJob(s scanner) (*deskrun.Job, error) {
	var (
		j                                            deskrun.Job
		state                                        string
		payload, result, jobErr                      sql.NullString
		createdAt, updatedAt, leaseExpires, finished int64
	)
	err := s.Scan(&j.ID, &j.MachineID, &j.Kind, &payload, &state, &result, &jobErr, &j.Progress,
		&createdAt, &updatedAt, &leaseExpires, &finished)
	if err != nil {
		return nil, err
	}
	j.State = deskrun.JobState(state)
	j.Payload, j.Result = rawJSON(payload), rawJSON(result)
	if j.Error, err = decodeError(jobErr); err != nil {
		return nil, fmt.Errorf("decode error of job %s: %w", j.ID, err)
	}
	j.CreatedAt = fromNanos(createdAt)
	j.UpdatedAt = fromNanos(updatedAt)
	j.LeaseExpires = fromNanos(leaseExpires)
	j.FinishedAt = fromNanos(finished)
	return &j, nil
}

func (q *queries) CreateJob(ctx context.Context, j *deskrun.Job) error {
	s := subject{op: "create job", kind: "job", id: j.ID, ref: fmt.Sprintf("machine %q", j.MachineID)}
	jobErr, err := errorJSON(j.Error)
	if err != nil {
		return fmt.Errorf("%s: %w", s.op, err)
	}
	_, err = q.w.ExecContext(ctx, `INSERT INTO jobs (`+jobColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		j.ID, j.MachineID, j.Kind, text(j.Payload), string(j.State), text(j.Result), jobErr, j.Progress,
		nanos(j.CreatedAt), nanos(j.UpdatedAt), nanos(j.LeaseExpires), nanos(j.FinishedAt))
	return interpretError(err, s)
}

func (q *queries) GetJob(ctx context.Context, id string) (*deskrun.Job, error) {
	j, err := scanJob(q.r.QueryRowContext(ctx, `SELECT `+jobColumns+` FROM jobs WHERE id = ?`, id))
	if err != nil {
		return nil, interpretError(err, subject{op: "get job", kind: "job", id: id})
	}
	return j, nil
}

func (q *queries) ListJobs(ctx context.Context, f store.JobFilter) ([]*deskrun.Job, error) {
	var w filter
	w.eq("machine_id", f.MachineID)
	in(&w, "state", f.States)
	query, args := w.query(`SELECT `+jobColumns+` FROM jobs`, `id DESC`, f.Limit)
	js, err := queryAll(ctx, q.r, scanJob, query, args...)
	return js, interpretError(err, subject{op: "list jobs"})
}

func (q *queries) UpdateJobState(ctx context.Context, id string, state deskrun.JobState, leaseExpires, at time.Time) (bool, error) {
	if state.Terminal() {
		return false, deskrun.Errorf(deskrun.CodeInvalid, "job %q: %s is a terminal state; finish the job instead", id, state)
	}
	res, err := q.w.ExecContext(ctx, `UPDATE jobs SET state = ?, lease_expires = ?, updated_at = ?
		WHERE id = ? AND `+notTerminal, string(state), nanos(leaseExpires), nanos(at), id)
	return q.changedLive(ctx, "jobs", res, err, subject{op: "update job state", kind: "job", id: id})
}

// SetJobProgress also moves a pushed job to running: the agent sends
// progress only for a job it has recorded and acknowledged, so the line
// stands for an ack the hub has not written yet.
func (q *queries) SetJobProgress(ctx context.Context, id, progress string, at time.Time) error {
	res, err := q.w.ExecContext(ctx, `UPDATE jobs SET progress = ?, updated_at = ?,
		state = CASE WHEN state = ? THEN ? ELSE state END WHERE id = ? AND `+notTerminal,
		progress, nanos(at), string(deskrun.JobPushed), string(deskrun.JobRunning), id)
	_, err = q.changedLive(ctx, "jobs", res, err, subject{op: "set job progress", kind: "job", id: id})
	return err
}

// FinishJob ends a job in one conditional UPDATE: of two callers racing to
// finish the same job exactly one gets true.
func (q *queries) FinishJob(ctx context.Context, id string, state deskrun.JobState, result []byte, jobErr *deskrun.Error, at time.Time) (bool, error) {
	if !state.Terminal() {
		return false, deskrun.Errorf(deskrun.CodeInvalid, "job %q: %s is not a terminal state", id, state)
	}
	errJSON, err := errorJSON(jobErr)
	if err != nil {
		return false, fmt.Errorf("finish job: %w", err)
	}
	res, err := q.w.ExecContext(ctx, `UPDATE jobs SET state = ?, result = ?, error = ?, lease_expires = 0,
		updated_at = ?, finished_at = ? WHERE id = ? AND `+notTerminal,
		string(state), text(result), errJSON, nanos(at), nanos(at), id)
	return q.changedLive(ctx, "jobs", res, err, subject{op: "finish job", kind: "job", id: id})
}

// changedLive reports whether a conditional update of a live job or run
// (row s.id of table) changed it; when it did not, the row either failed
// the update's condition, such as being terminal (false, nil), or is
// missing (CodeNotFound).
func (q *queries) changedLive(ctx context.Context, table string, res sql.Result, err error, s subject) (bool, error) {
	if err != nil {
		return false, interpretError(err, s)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, interpretError(err, s)
	}
	if n > 0 {
		return true, nil
	}
	var one int
	err = q.w.QueryRowContext(ctx, `SELECT 1 FROM `+table+` WHERE id = ?`, s.id).Scan(&one)
	return false, interpretError(err, s)
}

func (q *queries) RenewLeases(ctx context.Context, machineID string, leaseExpires time.Time) error {
	_, err := q.w.ExecContext(ctx, `UPDATE jobs SET lease_expires = ? WHERE machine_id = ? AND state IN (?, ?)`,
		nanos(leaseExpires), machineID, string(deskrun.JobPushed), string(deskrun.JobRunning))
	return interpretError(err, subject{op: "renew leases"})
}
