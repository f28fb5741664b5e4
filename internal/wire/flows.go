package wire

import (
	"encoding/json"
	"time"

	"github.com/deskrun/deskrun"
)

// FlowApply is the body of POST /api/v1/flows: the YAML text of a cloud
// flow and the file it came from (named in errors).
type FlowApply struct {
	File       string `json:"file,omitempty"`
	Definition string `json:"definition"`
}

// Flow is one version of a cloud flow.
type Flow struct {
	Name        string    `json:"name"`
	Version     int       `json:"version"`
	Digest      string    `json:"digest"`
	Description string    `json:"description,omitempty"`
	HookID      string    `json:"hook_id,omitempty"`
	Schedule    string    `json:"schedule,omitempty"`
	Steps       []string  `json:"steps,omitempty"`
	Definition  string    `json:"definition,omitempty"`
	Created     bool      `json:"created,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
}

// FlowList is GET /api/v1/flows.
type FlowList struct {
	Flows []Flow `json:"flows"`
}

// FlowRunCreate is the body of POST /api/v1/flows/{name}/runs.
type FlowRunCreate struct {
	Inputs map[string]any `json:"inputs,omitempty"`
}

// FlowStep is one attempt of a step in a flow run's timeline.
type FlowStep struct {
	StepID       string          `json:"step_id"`
	Attempt      int             `json:"attempt"`
	Kind         string          `json:"kind"`
	State        string          `json:"state"`
	DesktopRunID string          `json:"desktop_run_id,omitempty"`
	Outputs      json.RawMessage `json:"outputs,omitempty"`
	Error        *deskrun.Error  `json:"error,omitempty"`
	StartedAt    time.Time       `json:"started_at"`
	FinishedAt   time.Time       `json:"finished_at,omitzero"`
	DurationMS   int64           `json:"duration_ms,omitempty"`
}

// FlowRun is a cloud-flow run with its step timeline.
type FlowRun struct {
	ID         string          `json:"id"`
	Flow       string          `json:"flow"`
	Version    int             `json:"version"`
	State      string          `json:"state"`
	Trigger    json.RawMessage `json:"trigger,omitempty"`
	Inputs     json.RawMessage `json:"inputs,omitempty"`
	Outputs    json.RawMessage `json:"outputs,omitempty"`
	Error      *deskrun.Error  `json:"error,omitempty"`
	Steps      []FlowStep      `json:"steps"`
	CreatedAt  time.Time       `json:"created_at"`
	StartedAt  time.Time       `json:"started_at,omitzero"`
	FinishedAt time.Time       `json:"finished_at,omitzero"`
	DurationMS int64           `json:"duration_ms,omitempty"`
}

// FlowRunFrom converts a domain flow run and its steps.
func FlowRunFrom(r *deskrun.FlowRun, steps []*deskrun.FlowStep) FlowRun {
	out := FlowRun{ID: r.ID, Flow: r.Flow, Version: r.Version, State: string(r.State), Trigger: r.Trigger, Inputs: r.Inputs,
		Outputs: r.Outputs, Error: r.Error, Steps: make([]FlowStep, 0, len(steps)), CreatedAt: r.CreatedAt, StartedAt: r.StartedAt, FinishedAt: r.FinishedAt}
	if !r.FinishedAt.IsZero() && !r.StartedAt.IsZero() {
		out.DurationMS = r.FinishedAt.Sub(r.StartedAt).Milliseconds()
	}
	for _, s := range steps {
		fs := FlowStep{StepID: s.StepID, Attempt: s.Attempt, Kind: s.Kind, State: string(s.State), DesktopRunID: s.DesktopRunID,
			Outputs: s.Outputs, Error: s.Error, StartedAt: s.StartedAt, FinishedAt: s.FinishedAt}
		if !s.FinishedAt.IsZero() {
			fs.DurationMS = s.FinishedAt.Sub(s.StartedAt).Milliseconds()
		}
		out.Steps = append(out.Steps, fs)
	}
	return out
}

// FlowRunList is GET /api/v1/flowruns.
type FlowRunList struct {
	Runs []FlowRun `json:"runs"`
}

// SecretSet is the body of PUT /api/v1/secrets/{name}.
type SecretSet struct {
	Value string `json:"value"`
}

// SecretInfo names a stored secret; its value is never returned.
type SecretInfo struct {
	Name      string    `json:"name"`
	UpdatedAt time.Time `json:"updated_at"`
}

// SecretList is GET /api/v1/secrets.
type SecretList struct {
	Secrets []SecretInfo `json:"secrets"`
}
