package deskrun

import (
	"encoding/json"
	"time"
)

// JobState is the life of a job that the server pushes to an agent.
//
//	queued → pushed → running → succeeded | failed | cancelled
//
// queued: waiting for its machine's agent to be connected. pushed: sent on
// the agent's connection, not yet acknowledged. running: the agent has
// acknowledged it and holds a lease renewed by its heartbeats.
type JobState string

const (
	JobQueued    JobState = "queued"
	JobPushed    JobState = "pushed"
	JobRunning   JobState = "running"
	JobSucceeded JobState = "succeeded"
	JobFailed    JobState = "failed"
	JobCancelled JobState = "cancelled"
)

// Terminal reports whether s is a final state.
func (s JobState) Terminal() bool {
	return s == JobSucceeded || s == JobFailed || s == JobCancelled
}

// Job kinds. Later issues add their own (validate a credential, run a
// desktop flow); "noop" exists for tests and benchmarks.
const (
	JobNoop  = "noop"
	JobSleep = "sleep" // waits for payload {"ms": N}; tests durability
	// JobValidate logs a connection's user on with its sealed credential
	// (wire.ValidatePayload): the test logon of a connection.
	JobValidate = "validate"
)

// Job is a unit of work for one machine's agent.
type Job struct {
	ID        string
	MachineID string
	Kind      string
	Payload   json.RawMessage
	State     JobState
	Result    json.RawMessage
	Error     *Error
	Progress  string
	CreatedAt time.Time
	UpdatedAt time.Time
	// LeaseExpires is when the server gives up on a pushed or running job
	// whose agent has gone: the job then fails with AgentLost.
	LeaseExpires time.Time
	FinishedAt   time.Time
}
