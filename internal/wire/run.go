package wire

import (
	"encoding/json"
	"time"

	"github.com/deskrun/deskrun"
)

// Job kinds of desktop-flow runs (payloads below).
const (
	// JobDesktop runs a desktop flow as a connection's user.
	JobDesktop = "desktop"
)

// DesktopPayload is the payload of a "desktop" job: everything the agent
// needs to run one desktop flow as the connection's user. The password
// travels only sealed, inside Credential.
type DesktopPayload struct {
	RunID string `json:"run_id"`

	// The package: fetched from the server by digest (signed request, see
	// PackageAuthMessage) and cached on the agent.
	Flow    string `json:"flow"`
	Version int    `json:"version"`
	Digest  string `json:"digest"`

	// Credential is the connection's sealed credential, exactly as for a
	// validate job (Force is never set here).
	Credential ValidatePayload `json:"credential"`
	RunMode    string          `json:"run_mode"` // unattended | attended

	// Run is the manifest's command line, run with /bin/sh -c in the
	// package's directory copy; Desktop asks for a virtual display.
	Run       string `json:"run"`
	Desktop   bool   `json:"desktop"`
	TimeoutMS int64  `json:"timeout_ms"`
	// Inputs are bound and typed by the server from the manifest; the
	// agent exposes each as DESKRUN_INPUT_<NAME> and all of them as JSON
	// in the file $DESKRUN_INPUTS.
	Inputs map[string]any `json:"inputs,omitempty"`
	// Outputs are the declared outputs the flow must write to
	// $DESKRUN_OUTPUT (JSON object, or key=value lines).
	Outputs []OutputDecl `json:"outputs,omitempty"`
	// Screenshot asks for a screenshot even when the flow succeeds (one is
	// always taken when a desktop flow fails).
	Screenshot bool `json:"screenshot,omitempty"`
	// Sessions is the machine's policy for unattended runs: "shared" or
	// "exclusive" (a user who already has a session cannot get another).
	Sessions string `json:"sessions,omitempty"`
}

// OutputDecl is a declared output.
type OutputDecl struct {
	Name     string `json:"name"`
	Type     string `json:"type"` // string | number | boolean
	Required bool   `json:"required,omitempty"`
}

// DesktopOutput is a desktop job's result output, on success and on a
// failure of the flow itself (the job error then says why).
type DesktopOutput struct {
	ExitCode   int               `json:"exit_code"`
	Outputs    map[string]any    `json:"outputs,omitempty"`
	Identity   ValidateIdentity  `json:"identity"`
	Warnings   []ValidateWarning `json:"warnings,omitempty"`
	Screenshot []byte            `json:"screenshot,omitempty"` // PNG
	// Timings of the stages on the agent, in microseconds.
	Timings     map[string]int64 `json:"timings_us,omitempty"`  // logon, session, display, spawn, run
	Containment string           `json:"containment,omitempty"` // cgroup | process-group
	LastLines   []string         `json:"last_lines,omitempty"`  // the last lines of output, for DesktopFlowFailed
}

// FrameLog carries run output from agent to server.
const FrameLog = "log"

// LogChunk is a piece of a run's output. Seq increases per job, so the
// server can drop a chunk it already has after a reconnect.
type LogChunk struct {
	ID     string `json:"id"` // job id
	Seq    int64  `json:"seq"`
	Stream string `json:"stream"` // stdout | stderr
	Data   []byte `json:"data"`
}

// PackageAuthContext prefixes what an agent signs to fetch a package.
const PackageAuthContext = "deskrun package fetch v1"

// PackageAuthMessage is what the agent signs (Ed25519) to download a
// package: context, machine id, digest and a unix time the server checks
// within a few minutes. Sent as the headers X-Deskrun-Machine,
// X-Deskrun-Time and X-Deskrun-Signature (base64) of
// GET /api/v1/agent/packages/{digest}.
func PackageAuthMessage(machineID, digest string, unix int64) []byte {
	b, _ := json.Marshal([]any{PackageAuthContext, machineID, digest, unix})
	return b
}

// RunCreate is the body of POST /api/v1/desktopflows/{name}/runs.
type RunCreate struct {
	Connection string            `json:"connection"`
	Version    int               `json:"version,omitempty"` // 0: the latest
	Inputs     map[string]string `json:"inputs,omitempty"`
	Priority   string            `json:"priority,omitempty"` // high | normal
	Screenshot bool              `json:"screenshot,omitempty"`
}

// Run is a desktop-flow run as the API shows it.
type Run struct {
	ID              string          `json:"id"`
	Flow            string          `json:"flow"`
	Version         int             `json:"version"`
	Digest          string          `json:"digest"`
	ConnectionID    string          `json:"connection_id"`
	MachineID       string          `json:"machine_id,omitempty"`
	JobID           string          `json:"job_id,omitempty"`
	Priority        string          `json:"priority"`
	Inputs          json.RawMessage `json:"inputs,omitempty"`
	State           string          `json:"state"`
	PlacementReason string          `json:"placement_reason,omitempty"`
	Outputs         json.RawMessage `json:"outputs,omitempty"`
	ExitCode        *int            `json:"exit_code,omitempty"`
	Error           *deskrun.Error  `json:"error,omitempty"`
	Timings         json.RawMessage `json:"timings_us,omitempty"`
	HasScreenshot   bool            `json:"has_screenshot,omitempty"`
	CreatedAt       time.Time       `json:"created_at"`
	AssignedAt      time.Time       `json:"assigned_at,omitzero"`
	LogonAt         time.Time       `json:"logon_at,omitzero"`
	StartedAt       time.Time       `json:"started_at,omitzero"`
	FinishedAt      time.Time       `json:"finished_at,omitzero"`
	UpdatedAt       time.Time       `json:"updated_at"`
}

// RunFrom converts a domain run.
func RunFrom(r *deskrun.Run) Run {
	return Run{ID: r.ID, Flow: r.Flow, Version: r.Version, Digest: r.Digest, ConnectionID: r.ConnectionID,
		MachineID: r.MachineID, JobID: r.JobID, Priority: string(r.Priority), Inputs: r.Inputs, State: string(r.State),
		PlacementReason: r.PlacementReason, Outputs: r.Outputs, ExitCode: r.ExitCode, Error: r.Error, Timings: r.Timings,
		CreatedAt: r.CreatedAt, AssignedAt: r.AssignedAt, LogonAt: r.LogonAt, StartedAt: r.StartedAt,
		FinishedAt: r.FinishedAt, UpdatedAt: r.UpdatedAt, HasScreenshot: r.HasScreenshot}
}

// RunList is the body of GET /api/v1/runs.
type RunList struct {
	Runs []Run `json:"runs"`
}

// RunLogLine is a chunk of output as GET /api/v1/runs/{id}/logs shows it.
type RunLogLine struct {
	Seq    int64     `json:"seq"`
	Stream string    `json:"stream"`
	Data   string    `json:"data"`
	At     time.Time `json:"at"`
}

// RunLog is the body of GET /api/v1/runs/{id}/logs (not following).
type RunLog struct {
	Chunks []RunLogLine `json:"chunks"`
	// Next is the seq to ask for (after=) to continue.
	Next int64 `json:"next"`
	// Done is true when the run is over and every chunk was returned.
	Done bool `json:"done"`
}
