package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/deskrun/deskrun"
)

const machineColumns = `id, name, os, arch, kernel, agent_version, protocol_version, join_state,
	domain, slots, sessions, signing_key, seal_key, seal_key_id, state, last_seen, offline_reason, created_at, doctor`

func scanMachine(s scanner) (*deskrun.Machine, error) {
	var (
		m                   deskrun.Machine
		lastSeen, createdAt int64
		signingKey, sealKey []byte
		joinState, state    string
		doctor              sql.NullString
	)
	err := s.Scan(&m.ID, &m.Name, &m.OS, &m.Arch, &m.Kernel, &m.AgentVersion, &m.ProtocolVersion, &joinState,
		&m.Domain, &m.Slots, &m.Sessions, &signingKey, &sealKey, &m.SealKeyID, &state, &lastSeen, &m.OfflineReason, &createdAt, &doctor)
	if err != nil {
		return nil, err
	}
	if doctor.Valid && doctor.String != "" {
		var r deskrun.DoctorReport
		if err := json.Unmarshal([]byte(doctor.String), &r); err != nil {
			return nil, fmt.Errorf("machine %s: doctor report: %w", m.ID, err)
		}
		m.Doctor = &r
	}
	m.JoinState = deskrun.JoinState(joinState)
	m.State = deskrun.MachineState(state)
	m.SigningKey = nonEmpty(signingKey)
	m.SealKey = nonEmpty(sealKey)
	m.LastSeen = fromNanos(lastSeen)
	m.CreatedAt = fromNanos(createdAt)
	return &m, nil
}

// Session policies of machines; a machine created without one is shared,
// as are the machines that existed before the policy (migration 0004).
const (
	sessionsShared    = "shared"
	sessionsExclusive = "exclusive"
)

// CreateMachine stores m; an empty Sessions is stored, and read back, as
// "shared".
func (q *queries) CreateMachine(ctx context.Context, m *deskrun.Machine) error {
	s := subject{op: "create machine", kind: "machine", id: m.ID, name: m.Name}
	sessions := m.Sessions
	if sessions == "" {
		sessions = sessionsShared
	}
	if err := checkSessions(m.ID, sessions); err != nil {
		return err
	}
	_, err := q.w.ExecContext(ctx, `INSERT INTO machines (`+machineColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		m.ID, m.Name, m.OS, m.Arch, m.Kernel, m.AgentVersion, m.ProtocolVersion, string(m.JoinState),
		m.Domain, m.Slots, sessions, blob(m.SigningKey), blob(m.SealKey), m.SealKeyID, string(m.State),
		nanos(m.LastSeen), m.OfflineReason, nanos(m.CreatedAt), doctorJSON(m.Doctor))
	return interpretError(err, s)
}

// doctorJSON is the doctor column's value: NULL for no report.
func doctorJSON(r *deskrun.DoctorReport) any {
	if r == nil {
		return nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil // a report is strings and a time: it always marshals
	}
	return string(b)
}

func checkSessions(id, sessions string) error {
	if sessions != sessionsShared && sessions != sessionsExclusive {
		return deskrun.Errorf(deskrun.CodeInvalid, "machine %q: sessions must be %q or %q, not %q",
			id, sessionsShared, sessionsExclusive, sessions)
	}
	return nil
}

func (q *queries) GetMachine(ctx context.Context, id string) (*deskrun.Machine, error) {
	m, err := scanMachine(q.r.QueryRowContext(ctx, `SELECT `+machineColumns+` FROM machines WHERE id = ?`, id))
	if err != nil {
		return nil, interpretError(err, subject{op: "get machine", kind: "machine", id: id})
	}
	return m, nil
}

func (q *queries) GetMachineByName(ctx context.Context, name string) (*deskrun.Machine, error) {
	m, err := scanMachine(q.r.QueryRowContext(ctx, `SELECT `+machineColumns+` FROM machines WHERE name = ?`, name))
	if err != nil {
		return nil, interpretError(err, subject{op: "get machine", kind: "machine", name: name})
	}
	return m, nil
}

// ListMachines returns every machine, ordered by name.
func (q *queries) ListMachines(ctx context.Context) ([]*deskrun.Machine, error) {
	ms, err := queryAll(ctx, q.r, scanMachine, `SELECT `+machineColumns+` FROM machines ORDER BY name`)
	return ms, interpretError(err, subject{op: "list machines"})
}

// UpdateMachineInfo stores what the agent reports about itself in its
// hello. The name, keys, presence, session policy and creation time are
// not touched.
func (q *queries) UpdateMachineInfo(ctx context.Context, m *deskrun.Machine) error {
	res, err := q.w.ExecContext(ctx, `UPDATE machines SET os = ?, arch = ?, kernel = ?, agent_version = ?,
		protocol_version = ?, join_state = ?, domain = ?, slots = ? WHERE id = ?`,
		m.OS, m.Arch, m.Kernel, m.AgentVersion, m.ProtocolVersion, string(m.JoinState), m.Domain, m.Slots, m.ID)
	return mustAffect(res, err, subject{op: "update machine", kind: "machine", id: m.ID})
}

func (q *queries) SetMachinePresence(ctx context.Context, id string, state deskrun.MachineState, lastSeen time.Time, reason string) error {
	res, err := q.w.ExecContext(ctx, `UPDATE machines SET state = ?, last_seen = ?, offline_reason = ? WHERE id = ?`,
		string(state), nanos(lastSeen), reason, id)
	return mustAffect(res, err, subject{op: "set machine presence", kind: "machine", id: id})
}

func (q *queries) MarkAllMachinesOffline(ctx context.Context, at time.Time, reason string) error {
	_, err := q.w.ExecContext(ctx, `UPDATE machines SET state = ?, last_seen = ?, offline_reason = ? WHERE state <> ?`,
		string(deskrun.MachineOffline), nanos(at), reason, string(deskrun.MachineOffline))
	return interpretError(err, subject{op: "mark machines offline"})
}

// SetMachineSessions sets the machine's unattended-session policy, which
// is an admin's choice and not the agent's report.
func (q *queries) SetMachineSessions(ctx context.Context, id, sessions string) error {
	if err := checkSessions(id, sessions); err != nil {
		return err
	}
	res, err := q.w.ExecContext(ctx, `UPDATE machines SET sessions = ? WHERE id = ?`, sessions, id)
	return mustAffect(res, err, subject{op: "set machine sessions", kind: "machine", id: id})
}

// SetMachineDoctor stores the agent's latest doctor report, replacing the
// one before; nil clears it.
func (q *queries) SetMachineDoctor(ctx context.Context, id string, r *deskrun.DoctorReport) error {
	res, err := q.w.ExecContext(ctx, `UPDATE machines SET doctor = ? WHERE id = ?`, doctorJSON(r), id)
	return mustAffect(res, err, subject{op: "set machine doctor report", kind: "machine", id: id})
}

// DeleteMachine deletes a machine; its jobs go with it (ON DELETE CASCADE).
func (q *queries) DeleteMachine(ctx context.Context, id string) error {
	res, err := q.w.ExecContext(ctx, `DELETE FROM machines WHERE id = ?`, id)
	return mustAffect(res, err, subject{op: "delete machine", kind: "machine", id: id})
}

// mustAffect turns an update of no row into CodeNotFound for s.
func mustAffect(res sql.Result, err error, s subject) error {
	if err != nil {
		return interpretError(err, s)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return interpretError(err, s)
	}
	if n == 0 {
		return interpretError(sql.ErrNoRows, s)
	}
	return nil
}
