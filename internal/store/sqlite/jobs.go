package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
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
	if payload.String != "" {
		j.Payload = json.RawMessage(payload.String)
	}
	if result.String != "" {
		j.Result = json.RawMessage(result.String)
	}
	if jobErr.String != "" {
		j.Error = new(deskrun.Error)
		if err := json.Unmarshal([]byte(jobErr.String), j.Error); err != nil {
			return nil, fmt.Errorf("decode error of job %s: %w", j.ID, err)
		}
	}
	j.CreatedAt = fromNanos(createdAt)
	j.UpdatedAt = fromNanos(updatedAt)
	j.LeaseExpires = fromNanos(leaseExpires)
	j.FinishedAt = fromNanos(finished)
	return &j, nil
}

// text stores empty JSON as NULL.
func text(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}

func (q *queries) CreateJob(ctx context.Context, j *deskrun.Job) error {
	s := subject{op: "create job", kind: "job", id: j.ID, ref: fmt.Sprintf("machine %q", j.MachineID)}
	var jobErr any
	if j.Error != nil {
		b, err := json.Marshal(j.Error)
		if err != nil {
			return fmt.Errorf("create job: encode error: %w", err)
		}
		jobErr = string(b)
	}
	_, err := q.w.ExecContext(ctx, `INSERT INTO jobs (`+jobColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
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
	s := subject{op: "list jobs"}
	var (
		where []string
		args  []any
	)
	if f.MachineID != "" {
		where = append(where, "machine_id = ?")
		args = append(args, f.MachineID)
	}
	if len(f.States) > 0 {
		where = append(where, "state IN (?"+strings.Repeat(", ?", len(f.States)-1)+")")
		for _, st := range f.States {
			args = append(args, string(st))
		}
	}
	query := `SELECT ` + jobColumns + ` FROM jobs`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	limit := f.Limit
	if limit <= 0 {
		limit = store.DefaultJobLimit
	}
	query += ` ORDER BY id DESC LIMIT ?`
	args = append(args, limit)

	rows, err := q.r.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, interpretError(err, s)
	}
	defer rows.Close()
	var js []*deskrun.Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, interpretError(err, s)
		}
		js = append(js, j)
	}
	return js, interpretError(rows.Err(), s)
}

func (q *queries) UpdateJobState(ctx context.Context, id string, state deskrun.JobState, leaseExpires, at time.Time) (bool, error) {
	if state.Terminal() {
		return false, deskrun.Errorf(deskrun.CodeInvalid, "job %q: %s is a terminal state; finish the job instead", id, state)
	}
	res, err := q.w.ExecContext(ctx, `UPDATE jobs SET state = ?, lease_expires = ?, updated_at = ?
		WHERE id = ? AND `+notTerminal, string(state), nanos(leaseExpires), nanos(at), id)
	return q.changedLiveJob(ctx, res, err, subject{op: "update job state", kind: "job", id: id})
}

func (q *queries) SetJobProgress(ctx context.Context, id, progress string, at time.Time) error {
	res, err := q.w.ExecContext(ctx, `UPDATE jobs SET progress = ?, updated_at = ? WHERE id = ? AND `+notTerminal,
		progress, nanos(at), id)
	_, err = q.changedLiveJob(ctx, res, err, subject{op: "set job progress", kind: "job", id: id})
	return err
}

// FinishJob ends a job in one conditional UPDATE: of two callers racing to
// finish the same job exactly one gets true.
func (q *queries) FinishJob(ctx context.Context, id string, state deskrun.JobState, result []byte, jobErr *deskrun.Error, at time.Time) (bool, error) {
	if !state.Terminal() {
		return false, deskrun.Errorf(deskrun.CodeInvalid, "job %q: %s is not a terminal state", id, state)
	}
	var errJSON any
	if jobErr != nil {
		b, err := json.Marshal(jobErr)
		if err != nil {
			return false, fmt.Errorf("finish job: encode error: %w", err)
		}
		errJSON = string(b)
	}
	res, err := q.w.ExecContext(ctx, `UPDATE jobs SET state = ?, result = ?, error = ?, lease_expires = 0,
		updated_at = ?, finished_at = ? WHERE id = ? AND `+notTerminal,
		string(state), text(result), errJSON, nanos(at), nanos(at), id)
	return q.changedLiveJob(ctx, res, err, subject{op: "finish job", kind: "job", id: id})
}

// changedLiveJob reports whether a conditional update of a live job
// changed it; when it did not, the job is either terminal (false, nil) or
// missing (CodeNotFound).
func (q *queries) changedLiveJob(ctx context.Context, res sql.Result, err error, s subject) (bool, error) {
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
	err = q.w.QueryRowContext(ctx, `SELECT 1 FROM jobs WHERE id = ?`, s.id).Scan(&one)
	return false, interpretError(err, s)
}

func (q *queries) RenewLeases(ctx context.Context, machineID string, leaseExpires time.Time) error {
	_, err := q.w.ExecContext(ctx, `UPDATE jobs SET lease_expires = ? WHERE machine_id = ? AND state IN (?, ?)`,
		nanos(leaseExpires), machineID, string(deskrun.JobPushed), string(deskrun.JobRunning))
	return interpretError(err, subject{op: "renew leases"})
}
