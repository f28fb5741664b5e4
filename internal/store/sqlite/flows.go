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

const flowColumns = `name, version, definition, digest, hook_id, created_at`

func scanFlow(s scanner) (*deskrun.FlowVersion, error) {
	var f deskrun.FlowVersion
	var def string
	var created int64
	if err := s.Scan(&f.Name, &f.Version, &def, &f.Digest, &f.HookID, &created); err != nil {
		return nil, err
	}
	f.Definition, f.CreatedAt = []byte(def), fromNanos(created)
	return &f, nil
}

func (q *queries) CreateFlowVersion(ctx context.Context, f *deskrun.FlowVersion) (bool, error) {
	s := subject{op: "create flow version", kind: "flow", name: f.Name}
	if f.Name == "" || len(f.Definition) == 0 || f.Digest == "" {
		return false, deskrun.Errorf(deskrun.CodeInvalid, "a flow version needs a name, a definition and a digest")
	}
	created := false
	err := q.atomic(ctx, func(q *queries) error {
		latest, err := scanFlow(q.w.QueryRowContext(ctx, `SELECT `+flowColumns+` FROM flows WHERE name = ? ORDER BY version DESC LIMIT 1`, f.Name))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			f.Version = 1
		case err != nil:
			return err
		case latest.Digest == f.Digest:
			*f = *latest
			return nil
		default:
			f.Version = latest.Version + 1
		}
		_, err = q.w.ExecContext(ctx, `INSERT INTO flows (`+flowColumns+`) VALUES (?, ?, ?, ?, ?, ?)`,
			f.Name, f.Version, string(f.Definition), f.Digest, f.HookID, nanos(f.CreatedAt))
		created = err == nil
		return err
	})
	return created, interpretError(err, s)
}

func (q *queries) GetFlowVersion(ctx context.Context, name string, version int) (*deskrun.FlowVersion, error) {
	var f *deskrun.FlowVersion
	var err error
	if version <= 0 {
		f, err = scanFlow(q.r.QueryRowContext(ctx, `SELECT `+flowColumns+` FROM flows WHERE name = ? ORDER BY version DESC LIMIT 1`, name))
	} else {
		f, err = scanFlow(q.r.QueryRowContext(ctx, `SELECT `+flowColumns+` FROM flows WHERE name = ? AND version = ?`, name, version))
	}
	if errors.Is(err, sql.ErrNoRows) {
		if version > 0 {
			return nil, deskrun.Errorf(deskrun.CodeNotFound, "flow %q has no version %d", name, version)
		}
		return nil, deskrun.Errorf(deskrun.CodeNotFound, "no flow named %q", name)
	}
	return f, interpretError(err, subject{op: "get flow"})
}

func (q *queries) ListFlows(ctx context.Context) ([]*deskrun.FlowVersion, error) {
	fs, err := queryAll(ctx, q.r, scanFlow, `SELECT `+flowColumns+` FROM flows f
		WHERE version = (SELECT MAX(version) FROM flows g WHERE g.name = f.name) ORDER BY name`)
	return fs, interpretError(err, subject{op: "list flows"})
}

func (q *queries) DeleteFlow(ctx context.Context, name string) error {
	return interpretError(q.atomic(ctx, func(q *queries) error {
		res, err := q.w.ExecContext(ctx, `DELETE FROM flows WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return deskrun.Errorf(deskrun.CodeNotFound, "no flow named %q", name)
		}
		_, err = q.w.ExecContext(ctx, `DELETE FROM schedule_ticks WHERE flow = ?`, name)
		return err
	}), subject{op: "delete flow"})
}

const flowRunColumns = `id, flow, version, trigger, inputs, state, outputs, error, created_at, started_at, finished_at, updated_at`

func scanFlowRun(s scanner) (*deskrun.FlowRun, error) {
	var r deskrun.FlowRun
	var trigger, inputs, outputs, runErr sql.NullString
	var state string
	var created, started, fin, upd int64
	if err := s.Scan(&r.ID, &r.Flow, &r.Version, &trigger, &inputs, &state, &outputs, &runErr, &created, &started, &fin, &upd); err != nil {
		return nil, err
	}
	r.Trigger, r.Inputs, r.Outputs = rawJSON(trigger), rawJSON(inputs), rawJSON(outputs)
	r.State = deskrun.FlowRunState(state)
	var err error
	if r.Error, err = decodeError(runErr); err != nil {
		return nil, fmt.Errorf("decode error of flow run %s: %w", r.ID, err)
	}
	r.CreatedAt, r.StartedAt, r.FinishedAt, r.UpdatedAt = fromNanos(created), fromNanos(started), fromNanos(fin), fromNanos(upd)
	return &r, nil
}

func (q *queries) CreateFlowRun(ctx context.Context, r *deskrun.FlowRun) error {
	s := subject{op: "create flow run", kind: "flow run", id: r.ID}
	if r.ID == "" || r.Flow == "" || r.State == "" {
		return deskrun.Errorf(deskrun.CodeInvalid, "a flow run needs an id, a flow and a state")
	}
	runErr, err := errorJSON(r.Error)
	if err != nil {
		return err
	}
	_, err = q.w.ExecContext(ctx, `INSERT INTO flow_runs (`+flowRunColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.ID, r.Flow, r.Version, text(r.Trigger), text(r.Inputs), string(r.State), text(r.Outputs), runErr,
		nanos(r.CreatedAt), nanos(r.StartedAt), nanos(r.FinishedAt), nanos(r.UpdatedAt))
	return interpretError(err, s)
}

func (q *queries) GetFlowRun(ctx context.Context, id string) (*deskrun.FlowRun, error) {
	r, err := scanFlowRun(q.r.QueryRowContext(ctx, `SELECT `+flowRunColumns+` FROM flow_runs WHERE id = ?`, id))
	if err != nil {
		return nil, interpretError(err, subject{op: "get flow run", kind: "flow run", id: id})
	}
	return r, nil
}

func (q *queries) ListFlowRuns(ctx context.Context, f store.FlowRunFilter) ([]*deskrun.FlowRun, error) {
	var w filter
	in(&w, "state", f.States)
	w.eq("flow", f.Flow)
	order := `id DESC`
	if f.Oldest {
		order = `id ASC`
	}
	query, args := w.query(`SELECT `+flowRunColumns+` FROM flow_runs`, order, f.Limit)
	rs, err := queryAll(ctx, q.r, scanFlowRun, query, args...)
	return rs, interpretError(err, subject{op: "list flow runs"})
}

func (q *queries) UpdateFlowRun(ctx context.Context, r *deskrun.FlowRun) (bool, error) {
	s := subject{op: "update flow run", kind: "flow run", id: r.ID}
	runErr, err := errorJSON(r.Error)
	if err != nil {
		return false, err
	}
	res, err := q.w.ExecContext(ctx, `UPDATE flow_runs SET state = ?, outputs = ?, error = ?, started_at = ?, finished_at = ?, updated_at = ?
		WHERE id = ? AND state NOT IN ('succeeded', 'failed', 'cancelled')`,
		string(r.State), text(r.Outputs), runErr, nanos(r.StartedAt), nanos(r.FinishedAt), nanos(r.UpdatedAt), r.ID)
	return q.changedLive(ctx, "flow_runs", res, err, s)
}

const flowStepColumns = `run_id, step_id, attempt, kind, state, outputs, error, desktop_run_id, started_at, finished_at`

func (q *queries) StartFlowStep(ctx context.Context, st *deskrun.FlowStep) error {
	s := subject{op: "start flow step", kind: "flow step", id: fmt.Sprintf("%s/%s#%d", st.RunID, st.StepID, st.Attempt),
		ref: fmt.Sprintf("flow run %q", st.RunID)}
	stErr, err := errorJSON(st.Error)
	if err != nil {
		return err
	}
	_, err = q.w.ExecContext(ctx, `INSERT INTO flow_steps (`+flowStepColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		st.RunID, st.StepID, st.Attempt, st.Kind, string(st.State), text(st.Outputs), stErr, st.DesktopRunID,
		nanos(st.StartedAt), nanos(st.FinishedAt))
	if err != nil && strings.Contains(err.Error(), "UNIQUE") {
		return deskrun.Errorf(deskrun.CodeConflict, "step %s attempt %d of flow run %s is already recorded", st.StepID, st.Attempt, st.RunID)
	}
	return interpretError(err, s)
}

func (q *queries) SetFlowStepDesktopRun(ctx context.Context, runID, stepID string, attempt int, desktopRunID string) error {
	res, err := q.w.ExecContext(ctx, `UPDATE flow_steps SET desktop_run_id = ? WHERE run_id = ? AND step_id = ? AND attempt = ?`,
		desktopRunID, runID, stepID, attempt)
	if err != nil {
		return interpretError(err, subject{op: "set flow step desktop run"})
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return deskrun.Errorf(deskrun.CodeNotFound, "step %s attempt %d of flow run %s not found", stepID, attempt, runID)
	}
	return nil
}

func (q *queries) FinishFlowStep(ctx context.Context, st *deskrun.FlowStep) (bool, error) {
	stErr, err := errorJSON(st.Error)
	if err != nil {
		return false, err
	}
	res, err := q.w.ExecContext(ctx, `UPDATE flow_steps SET state = ?, outputs = ?, error = ?, finished_at = ?
		WHERE run_id = ? AND step_id = ? AND attempt = ? AND state = 'running'`,
		string(st.State), text(st.Outputs), stErr, nanos(st.FinishedAt), st.RunID, st.StepID, st.Attempt)
	if err != nil {
		return false, interpretError(err, subject{op: "finish flow step"})
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

func (q *queries) ListFlowSteps(ctx context.Context, runID string) ([]*deskrun.FlowStep, error) {
	sts, err := queryAll(ctx, q.r, scanFlowStep, `SELECT `+flowStepColumns+` FROM flow_steps
		WHERE run_id = ? ORDER BY started_at, step_id, attempt`, runID)
	return sts, interpretError(err, subject{op: "list flow steps"})
}

func scanFlowStep(s scanner) (*deskrun.FlowStep, error) {
	var st deskrun.FlowStep
	var state string
	var outputs, stErr sql.NullString
	var started, fin int64
	if err := s.Scan(&st.RunID, &st.StepID, &st.Attempt, &st.Kind, &state, &outputs, &stErr, &st.DesktopRunID, &started, &fin); err != nil {
		return nil, err
	}
	st.State, st.Outputs = deskrun.FlowStepState(state), rawJSON(outputs)
	var err error
	if st.Error, err = decodeError(stErr); err != nil {
		return nil, fmt.Errorf("decode error of flow step: %w", err)
	}
	st.StartedAt, st.FinishedAt = fromNanos(started), fromNanos(fin)
	return &st, nil
}

func (q *queries) ClaimScheduleTick(ctx context.Context, flow string, tick time.Time, runID string) (bool, error) {
	res, err := q.w.ExecContext(ctx, `INSERT INTO schedule_ticks (flow, tick_time, run_id) VALUES (?, ?, ?)
		ON CONFLICT (flow, tick_time) DO NOTHING`, flow, nanos(tick), runID)
	if err != nil {
		return false, interpretError(err, subject{op: "claim schedule tick"})
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

func (q *queries) LastScheduleTick(ctx context.Context, flow string) (time.Time, error) {
	var n sql.NullInt64
	err := q.r.QueryRowContext(ctx, `SELECT MAX(tick_time) FROM schedule_ticks WHERE flow = ?`, flow).Scan(&n)
	if err != nil {
		return time.Time{}, interpretError(err, subject{op: "last schedule tick"})
	}
	return fromNanos(n.Int64), nil
}

func (q *queries) RecordWebhookDelivery(ctx context.Context, hookID, key, runID string, at time.Time) (string, bool, error) {
	first, created := runID, false
	err := q.atomic(ctx, func(q *queries) error {
		err := q.w.QueryRowContext(ctx, `SELECT run_id FROM webhook_deliveries WHERE hook_id = ? AND idempotency_key = ?`, hookID, key).Scan(&first)
		if err == nil {
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		first, created = runID, true
		_, err = q.w.ExecContext(ctx, `INSERT INTO webhook_deliveries (hook_id, idempotency_key, run_id, at) VALUES (?, ?, ?, ?)`,
			hookID, key, runID, nanos(at))
		return err
	})
	if err != nil {
		return "", false, interpretError(err, subject{op: "record webhook delivery"})
	}
	return first, created, nil
}

func (q *queries) PutSecret(ctx context.Context, name string, sealed []byte, at time.Time) error {
	if name == "" || len(sealed) == 0 {
		return deskrun.Errorf(deskrun.CodeInvalid, "a secret needs a name and a value")
	}
	_, err := q.w.ExecContext(ctx, `INSERT INTO secrets (name, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`, name, sealed, nanos(at))
	return interpretError(err, subject{op: "put secret"})
}

func (q *queries) GetSecret(ctx context.Context, name string) ([]byte, error) {
	var b []byte
	err := q.r.QueryRowContext(ctx, `SELECT value FROM secrets WHERE name = ?`, name).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, deskrun.Errorf(deskrun.CodeNotFound, "no secret named %q", name)
	}
	return b, interpretError(err, subject{op: "get secret"})
}

func (q *queries) ListSecrets(ctx context.Context) ([]deskrun.Secret, error) {
	ss, err := queryAll(ctx, q.r, func(r scanner) (deskrun.Secret, error) {
		var s deskrun.Secret
		var at int64
		err := r.Scan(&s.Name, &at)
		s.UpdatedAt = fromNanos(at)
		return s, err
	}, `SELECT name, updated_at FROM secrets ORDER BY name`)
	return ss, interpretError(err, subject{op: "list secrets"})
}

func (q *queries) DeleteSecret(ctx context.Context, name string) error {
	res, err := q.w.ExecContext(ctx, `DELETE FROM secrets WHERE name = ?`, name)
	if err != nil {
		return interpretError(err, subject{op: "delete secret"})
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return deskrun.Errorf(deskrun.CodeNotFound, "no secret named %q", name)
	}
	return nil
}
