package wire

import (
	"encoding/json"
	"time"

	"github.com/deskrun/deskrun"
)

// Secret is a password in an API body. It decodes from a JSON string into
// bytes the server can zero after sealing, and it prints (String, %v in a
// log line) as "[redacted]". Only the client marshals it, to send it.
type Secret []byte

// UnmarshalJSON reads a JSON string.
func (s *Secret) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return err
	}
	*s = Secret(str)
	return nil
}

// MarshalJSON encodes the secret as a JSON string (for the client).
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(string(s)) }

// String never reveals the secret.
func (s Secret) String() string { return "[redacted]" }

// Sealed is a credential sealed on the client to one machine's key.
type Sealed struct {
	MachineID  string `json:"machine_id"`
	KeyID      string `json:"key_id"`
	Ciphertext []byte `json:"ciphertext"`
}

// ConnectionCreate is the body of POST /api/v1/connections. Exactly one of
// Password (sealed by the server at once over TLS, never stored) and Sealed
// (sealed by the client to the machine's key, bound to ID) is set.
type ConnectionCreate struct {
	// ID is chosen by a client that seals on its side, since the seal binds
	// the connection id; empty otherwise.
	ID        string  `json:"id,omitempty"`
	Name      string  `json:"name"`
	Machine   string  `json:"machine"` // target machine, id or name
	Username  string  `json:"username"`
	Password  Secret  `json:"password,omitempty"`
	Sealed    *Sealed `json:"sealed,omitempty"`
	RunMode   string  `json:"run_mode,omitempty"`   // unattended (default) or attended
	LogonType string  `json:"logon_type,omitempty"` // interactive (default), batch, network
	// SkipTest saves the connection untested instead of testing the logon
	// on the machine (for a machine that is offline).
	SkipTest bool `json:"skip_test,omitempty"`
}

// ConnectionUpdate is the body of PATCH /api/v1/connections/{c}; empty
// fields keep their value. A new username or password is tested on the
// machine before it is saved.
type ConnectionUpdate struct {
	Username  string  `json:"username,omitempty"`
	Password  Secret  `json:"password,omitempty"`
	Sealed    *Sealed `json:"sealed,omitempty"`
	RunMode   string  `json:"run_mode,omitempty"`
	LogonType string  `json:"logon_type,omitempty"`
	SkipTest  bool    `json:"skip_test,omitempty"`
}

// CredentialInfo names a sealed credential without its ciphertext.
type CredentialInfo struct {
	MachineID string `json:"machine_id"`
	KeyID     string `json:"key_id"`
}

// Connection is a connection as the API shows it: never a password, never
// a ciphertext.
type Connection struct {
	ID              string           `json:"id"`
	Name            string           `json:"name"`
	Target          string           `json:"target"`
	Machine         string           `json:"machine,omitempty"` // the target machine's name
	Username        string           `json:"username"`
	RunMode         string           `json:"run_mode"`
	LogonType       string           `json:"logon_type"`
	Owner           string           `json:"owner,omitempty"`
	State           string           `json:"state"`
	Reason          string           `json:"reason,omitempty"`
	LastError       *deskrun.Error   `json:"last_error,omitempty"`
	StateChangedAt  time.Time        `json:"state_changed_at,omitzero"`
	LastTestedAt    time.Time        `json:"last_tested_at,omitzero"`
	ExpiresInDays   int              `json:"expires_in_days,omitempty"`
	ExpiryCheckedAt time.Time        `json:"expiry_checked_at,omitzero"`
	Credentials     []CredentialInfo `json:"credentials"`
	CreatedAt       time.Time        `json:"created_at"`
	UpdatedAt       time.Time        `json:"updated_at"`
}

// ConnectionFrom converts a domain connection.
func ConnectionFrom(c *deskrun.Connection, machineName string) Connection {
	out := Connection{
		ID: c.ID, Name: c.Name, Target: c.Target, Machine: machineName, Username: c.Username,
		RunMode: string(c.RunMode), LogonType: c.LogonType, Owner: c.Owner, State: string(c.State),
		Reason: c.Reason, LastError: c.LastError, StateChangedAt: c.StateChangedAt, LastTestedAt: c.LastTestedAt,
		ExpiresInDays: c.ExpiresInDays, ExpiryCheckedAt: c.ExpiryCheckedAt,
		Credentials: make([]CredentialInfo, 0, len(c.Credentials)), CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt,
	}
	for _, sc := range c.Credentials {
		out.Credentials = append(out.Credentials, CredentialInfo{MachineID: sc.MachineID, KeyID: sc.KeyID})
	}
	return out
}

// ConnectionList is the body of GET /api/v1/connections.
type ConnectionList struct {
	Connections []Connection `json:"connections"`
}

// ConnectionTest is the body of POST /api/v1/connections/{c}/test.
type ConnectionTest struct {
	// Force tests a broken connection anyway (admin only): one more logon
	// attempt with credentials that failed definitively before.
	Force bool `json:"force,omitempty"`
}

// ConnectionTestResult is the answer of a successful test.
type ConnectionTestResult struct {
	Connection Connection      `json:"connection"`
	Logon      *ValidateOutput `json:"logon,omitempty"`
}

// ValidatePayload is the payload of a "validate" job: log the connection's
// user on with its sealed credential, and report.
type ValidatePayload struct {
	ConnectionID   string `json:"connection_id"`
	ConnectionName string `json:"connection_name"`
	MachineID      string `json:"machine_id"`
	Username       string `json:"username"`
	LogonType      string `json:"logon_type"`
	KeyID          string `json:"key_id"`
	Ciphertext     []byte `json:"ciphertext"`
	// Force asks the agent to try even a credential it saw fail
	// definitively (an admin's forced re-test).
	Force bool `json:"force,omitempty"`
}

// ValidateOutput is a successful validate job's output.
type ValidateOutput struct {
	Identity ValidateIdentity  `json:"identity"`
	Warnings []ValidateWarning `json:"warnings,omitempty"`
}

// ValidateIdentity is whom the logon resolved to.
type ValidateIdentity struct {
	Username string   `json:"username"`
	UID      uint32   `json:"uid"`
	GID      uint32   `json:"gid"`
	Groups   []uint32 `json:"groups"`
	Home     string   `json:"home"`
	Shell    string   `json:"shell"`
}

// ValidateWarning is a warning of a successful logon.
type ValidateWarning struct {
	Reason  string `json:"reason"`
	Days    int    `json:"days,omitempty"`
	Message string `json:"message"`
}

// AuditEvent is an audit log entry as the API shows it.
type AuditEvent struct {
	ID             string    `json:"id"`
	At             time.Time `json:"at"`
	Actor          string    `json:"actor"`
	Action         string    `json:"action"`
	ConnectionID   string    `json:"connection_id,omitempty"`
	ConnectionName string    `json:"connection_name,omitempty"`
	MachineID      string    `json:"machine_id,omitempty"`
	Result         string    `json:"result"`
	Reason         string    `json:"reason,omitempty"`
	Detail         string    `json:"detail,omitempty"`
}

// AuditFrom converts a domain audit event.
func AuditFrom(e *deskrun.AuditEvent) AuditEvent {
	return AuditEvent{ID: e.ID, At: e.At, Actor: e.Actor, Action: e.Action, ConnectionID: e.ConnectionID,
		ConnectionName: e.ConnectionName, MachineID: e.MachineID, Result: e.Result, Reason: e.Reason, Detail: e.Detail}
}

// AuditList is the body of GET /api/v1/audit.
type AuditList struct {
	Events []AuditEvent `json:"events"`
}
