package deskrun

import (
	"encoding/json"
	"time"
)

// RunState is the life of a desktop-flow run:
//
//	queued → assigned → logging-on → running → succeeded | failed | cancelled | timed-out
//
// queued: waiting for a free slot on an online machine of its target.
// assigned: pushed to a machine's agent. logging-on: the agent is logging
// the connection's user on and opening the session. running: the flow's
// process runs as the user.
type RunState string

const (
	RunQueued    RunState = "queued"
	RunAssigned  RunState = "assigned"
	RunLoggingOn RunState = "logging-on"
	RunRunning   RunState = "running"
	RunSucceeded RunState = "succeeded"
	RunFailed    RunState = "failed"
	RunCancelled RunState = "cancelled"
	RunTimedOut  RunState = "timed-out"
)

// Terminal reports whether s is final.
func (s RunState) Terminal() bool {
	switch s {
	case RunSucceeded, RunFailed, RunCancelled, RunTimedOut:
		return true
	}
	return false
}

// Priority orders the queue: high before normal, then by age.
type Priority string

const (
	PriorityHigh   Priority = "high"
	PriorityNormal Priority = "normal"
)

// Run codes (the catalog documents each).
const (
	CodeNoCandidateMachine       = "NoCandidateMachine"
	CodeSessionExistsUnattended  = "SessionExistsForTheUserWhenUnattended"
	CodeAttendedUserNotLoggedIn  = "AttendedUserNotLoggedIn"
	CodeDesktopFlowFailed        = "DesktopFlowFailed"
	CodeDesktopFlowTimeout       = "DesktopFlowTimeout"
	CodeDesktopFlowOutputInvalid = "DesktopFlowOutputInvalid"
)

// Run is one execution of a desktop flow through a connection.
type Run struct {
	ID           string
	Flow         string
	Version      int
	Digest       string
	ConnectionID string
	MachineID    string // the machine it was placed on ("" while queued)
	JobID        string // the agent job that carries it
	Priority     Priority
	Inputs       json.RawMessage
	State        RunState
	// PlacementReason says why a queued run waits (offline, busy, session
	// conflict, connection broken); it becomes NoCandidateMachine's reason.
	PlacementReason string
	Screenshot      bool // take one even on success
	// HasScreenshot says a screenshot is stored (read-only: the store
	// derives it; SaveRunScreenshot sets it).
	HasScreenshot bool
	Outputs       json.RawMessage
	ExitCode      *int
	Error         *Error
	Timings       json.RawMessage // stage durations from the agent

	CreatedAt     time.Time
	AssignedAt    time.Time
	LogonAt       time.Time
	StartedAt     time.Time
	FinishedAt    time.Time
	UpdatedAt     time.Time
	QueueDeadline time.Time
}

// LogChunk is a piece of a run's output as stored: Seq orders the chunks
// of one run and makes appends idempotent (a chunk resent after a
// reconnect is stored once).
type LogChunk struct {
	Seq    int64
	Stream string // stdout | stderr
	Data   []byte
	At     time.Time
}
