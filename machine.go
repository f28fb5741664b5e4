package deskrun

import "time"

// MachineState says whether a machine's agent is connected.
type MachineState string

const (
	MachineOnline  MachineState = "online"
	MachineOffline MachineState = "offline"
)

// JoinState is how a machine authenticates its users: from local files
// only, or through a directory (SSSD, winbind, realmd). Connections use it
// to say which username form the machine expects.
type JoinState string

const (
	JoinLocal   JoinState = "local-only"
	JoinSSSD    JoinState = "sssd"
	JoinWinbind JoinState = "winbind"
	JoinRealm   JoinState = "realm"
)

// Machine is a registered agent's host.
type Machine struct {
	ID              string
	Name            string
	OS              string
	Arch            string
	Kernel          string
	AgentVersion    string
	ProtocolVersion int
	JoinState       JoinState
	Domain          string // the directory domain when joined, e.g. "test.example"
	Slots           int
	// Sessions is the machine's policy for unattended runs: "shared" (a
	// user may have other sessions) or "exclusive" (a user who already has
	// a session gets SessionExistsForTheUserWhenUnattended).
	Sessions string

	// SigningKey is the agent's Ed25519 public key: it proves the agent's
	// identity on every connect. Nothing stored on the server lets anyone
	// impersonate the agent.
	SigningKey []byte
	// SealKey is the agent's HPKE public key (MLKEM768X25519) that
	// credentials are sealed to; SealKeyID names it in sealed blobs.
	SealKey   []byte
	SealKeyID string

	State         MachineState
	LastSeen      time.Time
	OfflineReason string
	CreatedAt     time.Time

	// Doctor is the latest doctor report the agent sent (nil: none yet;
	// agents before protocol 4 never send one).
	Doctor *DoctorReport
}

// Statuses of a doctor check.
const (
	DoctorPass = "pass"
	DoctorWarn = "warn"
	DoctorFail = "fail"
	DoctorSkip = "skip"
)

// DoctorCheck is one line of a doctor report: what was checked, how it
// went, and the fix when it did not pass.
type DoctorCheck struct {
	Name   string `json:"name"`
	Status string `json:"status"` // pass, warn, fail, skip
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// DoctorReport is what `deskrun doctor` finds on a machine: whether it can
// log users on for deskrun, and how to fix what it cannot. The agent runs
// the machine-wide checks (no user) when it connects and then hourly, and
// sends the report to the server.
type DoctorReport struct {
	At     time.Time     `json:"at"`
	Checks []DoctorCheck `json:"checks"`
}

// DoctorCounts counts a report's checks by status.
type DoctorCounts struct{ Pass, Warn, Fail, Skip int }

// Counts counts the checks by status.
func (r *DoctorReport) Counts() DoctorCounts {
	var c DoctorCounts
	for _, ch := range r.Checks {
		switch ch.Status {
		case DoctorPass:
			c.Pass++
		case DoctorWarn:
			c.Warn++
		case DoctorFail:
			c.Fail++
		default:
			c.Skip++
		}
	}
	return c
}

// Failed says whether any check failed.
func (r *DoctorReport) Failed() bool { return r.Counts().Fail > 0 }
