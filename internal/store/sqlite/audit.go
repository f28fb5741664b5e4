package sqlite

import (
	"context"
	"strings"

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
	s := subject{op: "list audit events"}
	var (
		where []string
		args  []any
	)
	if f.ConnectionID != "" {
		where = append(where, "connection_id = ?")
		args = append(args, f.ConnectionID)
	}
	if f.Action != "" {
		where = append(where, "action = ?")
		args = append(args, f.Action)
	}
	query := `SELECT ` + auditColumns + ` FROM audit`
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
	var es []*deskrun.AuditEvent
	for rows.Next() {
		var (
			e  deskrun.AuditEvent
			at int64
		)
		if err := rows.Scan(&e.ID, &at, &e.Actor, &e.Action, &e.ConnectionID, &e.ConnectionName,
			&e.MachineID, &e.Result, &e.Reason, &e.Detail); err != nil {
			return nil, interpretError(err, s)
		}
		e.At = fromNanos(at)
		es = append(es, &e)
	}
	return es, interpretError(rows.Err(), s)
}
