package deskrun

import (
	"encoding/json"
	"time"
)

// FlowVersion is one applied version of a cloud flow: the YAML as the
// maker wrote it (internal/flow parses and checks it) and the webhook id
// it answers to, if any.
type FlowVersion struct {
	Name       string
	Version    int
	Definition []byte
	Digest     string // sha256 of Definition, hex: applying the same text twice makes no version
	HookID     string
	CreatedAt  time.Time
}

// FlowRunState is the life of a cloud-flow run:
//
//	queued → running → succeeded | failed | cancelled
//
// queued: over the flow's concurrency limit, waiting for a run to end.
type FlowRunState string

const (
	FlowRunQueued    FlowRunState = "queued"
	FlowRunRunning   FlowRunState = "running"
	FlowRunSucceeded FlowRunState = "succeeded"
	FlowRunFailed    FlowRunState = "failed"
	FlowRunCancelled FlowRunState = "cancelled"
)

// Terminal reports whether s is final.
func (s FlowRunState) Terminal() bool {
	return s == FlowRunSucceeded || s == FlowRunFailed || s == FlowRunCancelled
}

// FlowRun is one execution of a cloud flow.
type FlowRun struct {
	ID         string // f_…
	Flow       string
	Version    int
	Trigger    json.RawMessage // {kind: manual|api|schedule|webhook, …}
	Inputs     json.RawMessage
	State      FlowRunState
	Outputs    json.RawMessage
	Error      *Error
	CreatedAt  time.Time
	StartedAt  time.Time
	FinishedAt time.Time
	UpdatedAt  time.Time
}

// FlowStepState is the life of one attempt of a step.
type FlowStepState string

const (
	FlowStepRunning   FlowStepState = "running"
	FlowStepSucceeded FlowStepState = "succeeded"
	FlowStepFailed    FlowStepState = "failed"
	FlowStepSkipped   FlowStepState = "skipped"
)

// FlowStep is one attempt of one step of a flow run. Its start is
// committed before the step acts and its result once it has; a desktop
// step records the id of its desktop run before that run exists, so a
// restarted server re-attaches to it instead of starting another.
type FlowStep struct {
	RunID        string
	StepID       string
	Attempt      int // 1, 2, … (retries)
	Kind         string
	State        FlowStepState
	Outputs      json.RawMessage
	Error        *Error
	DesktopRunID string
	StartedAt    time.Time
	FinishedAt   time.Time
}

// Secret names a value of the server's secret store; the value itself is
// never returned by the API.
type Secret struct {
	Name      string
	UpdatedAt time.Time
}
