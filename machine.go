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
}
