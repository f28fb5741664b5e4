package sqlite

import (
	"context"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/store"
)

const auditColumns = `id, at, actor, action, connection_id, connection_name, machine_id, result, reason, detail`

// AppendAudit adds an event to the log. The caller gives it an id from
// deskrun.NewID, which sorts by time: the log's order is its ids' order.
func (q *queries) AppendAudit(ctx context.Context, e *deskrun.AuditEvent) error {
	s := subject{op: "append audit event", kind: "audit event", id: e.ID}
	if e.ID == "" || e.Action == "" {
		return deskrun.Errorf(deskrun.CodeInvalid, "an audit event needs an id and an action")
	}
	_, err := q.w.ExecContext(ctx, `INSERT INTO audit (`+auditColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		e.ID, nanos(e.At), e.Actor, e.Action, e.ConnectionID, e.ConnectionName, e.MachineID, e.Result, e.Reason, e.Detail)
	return interpretError(err, s)
}

// ListAudit returns events newest first (by id); ConnectionID and Action
// filter when not empty; a Limit of 0 or less means DefaultJobLimit.
func (q *queries) ListAudit(ctx context.Context, f store.AuditFilter) ([]*deskrun.AuditEvent, error) {
	var w filter
	w.eq("connection_id", f.ConnectionID)
	w.eq("action", f.Action)
	query, args := w.query(`SELECT `+auditColumns+` FROM audit`, `id DESC`, f.Limit)
	es, err := queryAll(ctx, q.r, scanAudit, query, args...)
	return es, interpretError(err, subject{op: "list audit events"})
}

func scanAudit(s scanner) (*deskrun.AuditEvent, error) {
	var (
		e  deskrun.AuditEvent
		at int64
	)
	if err := s.Scan(&e.ID, &at, &e.Actor, &e.Action, &e.ConnectionID, &e.ConnectionName,
		&e.MachineID, &e.Result, &e.Reason, &e.Detail); err != nil {
		return nil, err
	}
	e.At = fromNanos(at)
	return &e, nil
}
