package deskrun

import "time"

// ConnectionState is the health of a connection's credential.
type ConnectionState string

const (
	// ConnectionHealthy: the last logon with it succeeded.
	ConnectionHealthy ConnectionState = "healthy"
	// ConnectionUntested: saved with --skip-test, or the test could not run.
	ConnectionUntested ConnectionState = "untested"
	// ConnectionExpiring: the last logon succeeded with a warning that the
	// password expires soon.
	ConnectionExpiring ConnectionState = "expiring"
	// ConnectionBroken: a logon failed for a definitive reason (wrong
	// password, locked, disabled, expired, must change). No job uses the
	// credential again until it is updated or an admin re-tests it.
	ConnectionBroken ConnectionState = "broken"
)

// RunMode says whether deskrun makes the session (unattended) or runs in
// the user's own session (attended).
type RunMode string

const (
	RunUnattended RunMode = "unattended"
	RunAttended   RunMode = "attended"
)

// Connection is a named credential for a machine group (a lone machine is
// a group of one, whose id is the machine's id). Its password exists only
// sealed to the keys of the target's machines.
type Connection struct {
	ID        string
	Name      string
	Target    string // machine group id; for now a machine id
	Username  string
	RunMode   RunMode
	LogonType string // interactive, batch, network
	Owner     string // who created it (a token id, or "console:USER")

	State ConnectionState
	// Reason is the reason of the failure or warning behind State.
	Reason string
	// LastError is the full error of the last failed logon.
	LastError      *Error
	StateChangedAt time.Time
	LastTestedAt   time.Time
	// ExpiresInDays and ExpiryCheckedAt record the last "password expires
	// in N days" warning (0: none).
	ExpiresInDays   int
	ExpiryCheckedAt time.Time

	Credentials []SealedCredential
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// SealedCredential is a connection's password sealed to one machine's
// HPKE key, bound to the connection and machine ids.
type SealedCredential struct {
	MachineID  string
	KeyID      string
	Ciphertext []byte
}

// CredentialFor returns the credential sealed for machineID.
func (c *Connection) CredentialFor(machineID string) (SealedCredential, bool) {
	for _, sc := range c.Credentials {
		if sc.MachineID == machineID {
			return sc, true
		}
	}
	return SealedCredential{}, false
}

// SealInfo is the HPKE info that binds a sealed credential to its
// connection and machine: a ciphertext moved to another connection or
// machine does not open.
func SealInfo(connectionID, machineID string) []byte {
	return []byte("deskrun credential v1\x00" + connectionID + "\x00" + machineID)
}

// AuditEvent records who did what to which credential, and what came of
// it. It never holds a secret.
type AuditEvent struct {
	ID             string
	At             time.Time
	Actor          string // token id, "agent:MACHINE", "server"
	Action         string // see the Audit* constants
	ConnectionID   string
	ConnectionName string
	MachineID      string
	Result         string // "ok", "failed", "refused"
	Reason         string
	Detail         string
}

// Audit actions.
const (
	AuditConnectionCreate = "connection.create"
	AuditConnectionUpdate = "connection.update"
	AuditConnectionDelete = "connection.delete"
	AuditConnectionBroken = "connection.broken"
	AuditCredentialSeal   = "credential.seal"
	AuditCredentialUnseal = "credential.unseal"
	AuditLogonAttempt     = "logon.attempt"
	AuditLogonRefused     = "logon.refused" // the breaker stopped it before the machine
)
