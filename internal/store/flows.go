package store

import (
	"context"
	"time"

	"github.com/deskrun/deskrun"
)

// FlowTx is the part of Tx that holds cloud flows, their runs, the steps
// of those runs, schedule ticks, webhook deliveries and secrets.
type FlowTx interface {
	// CreateFlowVersion makes f version latest+1 of f.Name, filling
	// f.Version; when the latest version already has f.Digest nothing is
	// written, f becomes that version and created is false.
	CreateFlowVersion(ctx context.Context, f *deskrun.FlowVersion) (created bool, err error)
	// GetFlowVersion returns a version of a flow; version 0 is the latest.
	GetFlowVersion(ctx context.Context, name string, version int) (*deskrun.FlowVersion, error)
	// ListFlows returns the latest version of every flow, by name.
	ListFlows(ctx context.Context) ([]*deskrun.FlowVersion, error)
	// DeleteFlow deletes every version of a flow and its schedule ticks;
	// its runs stay, as history.
	DeleteFlow(ctx context.Context, name string) error

	CreateFlowRun(ctx context.Context, r *deskrun.FlowRun) error
	GetFlowRun(ctx context.Context, id string) (*deskrun.FlowRun, error)
	// ListFlowRuns returns runs newest first; Limit 0 is DefaultJobLimit.
	// With Oldest, oldest first (the order a queue is served in).
	ListFlowRuns(ctx context.Context, f FlowRunFilter) ([]*deskrun.FlowRun, error)
	// UpdateFlowRun writes state, outputs, error and the timestamps unless
	// the stored run is terminal: it returns false, changing nothing, then.
	UpdateFlowRun(ctx context.Context, r *deskrun.FlowRun) (bool, error)

	// StartFlowStep records an attempt's start: CodeConflict when that
	// attempt of that step is already recorded.
	StartFlowStep(ctx context.Context, s *deskrun.FlowStep) error
	// SetFlowStepDesktopRun records the desktop run of a running attempt.
	SetFlowStepDesktopRun(ctx context.Context, runID, stepID string, attempt int, desktopRunID string) error
	// FinishFlowStep records an attempt's result (state, outputs, error,
	// finished_at) exactly once: false, changing nothing, when the attempt
	// is not running.
	FinishFlowStep(ctx context.Context, s *deskrun.FlowStep) (bool, error)
	// ListFlowSteps returns a run's attempts in the order they started.
	ListFlowSteps(ctx context.Context, runID string) ([]*deskrun.FlowStep, error)

	// ClaimScheduleTick records that the tick of flow at tick is taken by
	// runID ("" for a tick skipped). Only one claim of a tick succeeds,
	// whatever the number of servers on the store: the others get false.
	ClaimScheduleTick(ctx context.Context, flow string, tick time.Time, runID string) (bool, error)
	// LastScheduleTick is the latest claimed tick of a flow, or the zero
	// time.
	LastScheduleTick(ctx context.Context, flow string) (time.Time, error)

	// RecordWebhookDelivery records a delivery of hookID under key. When the
	// key was seen already it returns the run of the first delivery and
	// false.
	RecordWebhookDelivery(ctx context.Context, hookID, key, runID string, at time.Time) (firstRunID string, created bool, err error)

	// PutSecret creates or replaces a secret's (sealed) value.
	PutSecret(ctx context.Context, name string, sealed []byte, at time.Time) error
	GetSecret(ctx context.Context, name string) ([]byte, error)
	// ListSecrets returns names only, by name.
	ListSecrets(ctx context.Context) ([]deskrun.Secret, error)
	DeleteSecret(ctx context.Context, name string) error
}

// FlowRunFilter selects flow runs; empty fields do not filter.
type FlowRunFilter struct {
	Flow   string
	States []deskrun.FlowRunState
	Limit  int
	Oldest bool
}
