// Package wire holds the JSON shapes of deskrun's API and of the agent
// protocol, and ProtocolVersion. It imports only the standard library and
// the domain package, never the store: what crosses the wire is a contract
// of its own, converted from the domain at the edge.
package wire

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/deskrun/deskrun"
)

// ErrorEnvelope is the body of every failed API request.
type ErrorEnvelope struct {
	Error *deskrun.Error `json:"error"`
}

// DecodeError rebuilds the typed error of a failed request from its body;
// a body that is not an envelope (a proxy's page, say) becomes an
// InternalError that names the status and the request.
func DecodeError(status int, request string, body []byte) *deskrun.Error {
	var env ErrorEnvelope
	if json.Unmarshal(body, &env) == nil && env.Error != nil && env.Error.Code != "" {
		return env.Error
	}
	return &deskrun.Error{Code: deskrun.CodeInternal, Message: fmt.Sprintf("HTTP %d from %s", status, request)}
}

// Machine is a machine as the API shows it.
type Machine struct {
	ID              string    `json:"id"`
	Name            string    `json:"name"`
	OS              string    `json:"os"`
	Arch            string    `json:"arch"`
	Kernel          string    `json:"kernel"`
	AgentVersion    string    `json:"agent_version"`
	ProtocolVersion int       `json:"protocol_version"`
	JoinState       string    `json:"join_state"`
	Domain          string    `json:"domain,omitempty"`
	Slots           int       `json:"slots"`
	Sessions        string    `json:"unattended_sessions"`
	SealKeyID       string    `json:"seal_key_id"`
	SealKey         []byte    `json:"seal_key"` // HPKE public key, for clients that seal credentials
	State           string    `json:"state"`
	LastSeen        time.Time `json:"last_seen,omitzero"`
	OfflineReason   string    `json:"offline_reason,omitempty"`
	CreatedAt       time.Time `json:"created_at"`
	// Doctor is the agent's latest doctor report (GET of one machine only).
	Doctor *deskrun.DoctorReport `json:"doctor,omitempty"`
}

// MachineFrom converts a domain machine.
func MachineFrom(m *deskrun.Machine) Machine {
	return Machine{
		ID: m.ID, Name: m.Name, OS: m.OS, Arch: m.Arch, Kernel: m.Kernel,
		AgentVersion: m.AgentVersion, ProtocolVersion: m.ProtocolVersion,
		JoinState: string(m.JoinState), Domain: m.Domain, Slots: m.Slots, Sessions: m.Sessions, SealKeyID: m.SealKeyID, SealKey: m.SealKey,
		State: string(m.State), LastSeen: m.LastSeen, OfflineReason: m.OfflineReason, CreatedAt: m.CreatedAt,
		Doctor: m.Doctor,
	}
}

// MachineUpdate is the body of PATCH /api/v1/machines/{machine}.
type MachineUpdate struct {
	// UnattendedSessions is "shared" or "exclusive": with exclusive, an
	// unattended run of a user who already has a session on the machine
	// fails with SessionExistsForTheUserWhenUnattended.
	UnattendedSessions string `json:"unattended_sessions,omitempty"`
}

// MachineList is the body of GET /api/v1/machines.
type MachineList struct {
	Machines []Machine `json:"machines"`
}

// TokenCreate is the body of POST /api/v1/tokens.
type TokenCreate struct {
	Kind string `json:"kind"` // "api" or "enrollment"
	Name string `json:"name,omitempty"`
	Role string `json:"role,omitempty"` // api tokens: admin, maker, viewer
	// TTL is a Go duration ("1h"); empty means 1h for enrollment tokens and
	// no expiry for API tokens.
	TTL  string `json:"ttl,omitempty"`
	Uses int    `json:"uses,omitempty"` // enrollment tokens; default 1
}

// Token is a token as the API shows it. Secret is set only in the answer to
// its creation: the server keeps a hash and cannot show it again.
type Token struct {
	ID        string    `json:"id"`
	Kind      string    `json:"kind"`
	Name      string    `json:"name,omitempty"`
	Role      string    `json:"role,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	UsesLeft  int       `json:"uses_left,omitempty"`
	Revoked   bool      `json:"revoked"`
	LastUsed  time.Time `json:"last_used,omitzero"`
	Secret    string    `json:"secret,omitempty"`
}

// TokenFrom converts a domain token (never its hash).
func TokenFrom(t *deskrun.Token) Token {
	return Token{
		ID: t.ID, Kind: string(t.Kind), Name: t.Name, Role: string(t.Role), CreatedAt: t.CreatedAt,
		ExpiresAt: t.ExpiresAt, UsesLeft: t.UsesLeft, Revoked: !t.RevokedAt.IsZero(), LastUsed: t.LastUsed,
	}
}

// TokenList is the body of GET /api/v1/tokens.
type TokenList struct {
	Tokens []Token `json:"tokens"`
}

// JobCreate is the body of POST /api/v1/jobs.
type JobCreate struct {
	Machine string          `json:"machine"` // id or name
	Kind    string          `json:"kind"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// Job is a job as the API shows it.
type Job struct {
	ID           string          `json:"id"`
	MachineID    string          `json:"machine_id"`
	Kind         string          `json:"kind"`
	Payload      json.RawMessage `json:"payload,omitempty"`
	State        string          `json:"state"`
	Result       json.RawMessage `json:"result,omitempty"`
	Error        *deskrun.Error  `json:"error,omitempty"`
	Progress     string          `json:"progress,omitempty"`
	CreatedAt    time.Time       `json:"created_at"`
	UpdatedAt    time.Time       `json:"updated_at"`
	LeaseExpires time.Time       `json:"lease_expires,omitzero"`
	FinishedAt   time.Time       `json:"finished_at,omitzero"`
}

// JobFrom converts a domain job.
func JobFrom(j *deskrun.Job) Job {
	return Job{
		ID: j.ID, MachineID: j.MachineID, Kind: j.Kind, Payload: j.Payload, State: string(j.State),
		Result: j.Result, Error: j.Error, Progress: j.Progress, CreatedAt: j.CreatedAt, UpdatedAt: j.UpdatedAt,
		LeaseExpires: j.LeaseExpires, FinishedAt: j.FinishedAt,
	}
}

// JobList is the body of GET /api/v1/jobs.
type JobList struct {
	Jobs []Job `json:"jobs"`
}

// Health is the body of /healthz and /readyz.
type Health struct {
	Status  string `json:"status"`
	Version string `json:"version,omitempty"`
	Detail  string `json:"detail,omitempty"`
}
