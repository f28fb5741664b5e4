package control

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/flow"
	"github.com/deskrun/deskrun/internal/notify"
	"github.com/deskrun/deskrun/internal/store"
	"github.com/deskrun/deskrun/internal/wire"
)

// Cloud flows run here. Durability: a run's steps are committed one by one
// (flow_steps: the start of an attempt before it acts, its result after),
// so a server that starts again resumes every running flow run from its
// last committed step and never runs a finished step twice:
//
//   - a desktop step's desktop run id is chosen and committed before the
//     run is created; after a restart the step re-attaches to that run (or
//     creates it, if the crash came before), and waits for it by event
//     (the runs' in-memory waiters), never by polling the store;
//   - an http step found started but not finished is sent again only when
//     it is marked idempotent; otherwise it fails with FlowStepInterrupted,
//     because deskrun cannot know whether the request had its effect.
//
// Resumption assumes one server owns the running flow runs of a store.
// Schedule ticks are safe with several servers: a tick is claimed by a
// unique row (schedule_ticks) in the transaction that creates its run.

// FlowPolicy tunes cloud flows.
type FlowPolicy struct {
	// HTTPClient sends http steps (default: 30s timeout).
	HTTPClient *http.Client
	// MisfireGrace: a tick older than this when the server sees it was
	// missed (the server was down), and the flow's missed policy applies.
	MisfireGrace time.Duration
	// WebhookTolerance bounds the age of a webhook signature.
	WebhookTolerance time.Duration
	// MaxWebhookBody bounds a webhook request body.
	MaxWebhookBody int64
	// Sleep waits between retries; tests make it instant.
	Sleep func(ctx context.Context, d time.Duration) error
	// NoTimer: schedules fire only through FireSchedules (tests with an
	// injected clock).
	NoTimer bool
}

// DefaultFlowPolicy returns the defaults.
func DefaultFlowPolicy() FlowPolicy {
	return FlowPolicy{MisfireGrace: time.Minute, WebhookTolerance: 5 * time.Minute, MaxWebhookBody: 1 << 20}
}

type flowEngine struct {
	mu     sync.Mutex
	ctx    context.Context
	active map[string]bool
	defs   map[string]*flow.Definition // by digest
	timer  *time.Timer
	wg     sync.WaitGroup
	admit  keyedMutex
}

// StartFlows resumes the flow runs a stopped server left running, admits
// queued ones and arms the schedule timer. ctx ends the engine.
func (s *Service) StartFlows(ctx context.Context) error {
	s.flows.mu.Lock()
	s.flows.ctx = ctx
	s.flows.mu.Unlock()
	running, err := s.Store.ListFlowRuns(ctx, store.FlowRunFilter{States: []deskrun.FlowRunState{deskrun.FlowRunRunning}, Limit: 100000, Oldest: true})
	if err != nil {
		return err
	}
	for _, r := range running {
		s.Log.Info("flow run resumed", "flow_run_id", r.ID, "flow", r.Flow)
		s.advance(r.ID)
	}
	flows, err := s.Store.ListFlows(ctx)
	if err != nil {
		return err
	}
	for _, f := range flows {
		s.admitFlowRuns(ctx, f.Name)
	}
	s.armSchedule()
	go func() {
		<-ctx.Done()
		s.flows.mu.Lock()
		if s.flows.timer != nil {
			s.flows.timer.Stop()
		}
		s.flows.mu.Unlock()
	}()
	return nil
}

// WaitFlows waits for the executors in flight (tests).
func (s *Service) WaitFlows() { s.flows.wg.Wait() }

func (s *Service) flowPolicy() FlowPolicy {
	p := s.Flows
	d := DefaultFlowPolicy()
	if p.MisfireGrace <= 0 {
		p.MisfireGrace = d.MisfireGrace
	}
	if p.WebhookTolerance <= 0 {
		p.WebhookTolerance = d.WebhookTolerance
	}
	if p.MaxWebhookBody <= 0 {
		p.MaxWebhookBody = d.MaxWebhookBody
	}
	if p.HTTPClient == nil {
		p.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if p.Sleep == nil {
		p.Sleep = func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return p
}

// ApplyFlow checks a definition and stores it as a new version (none when
// the text is the latest version's).
func (s *Service) ApplyFlow(ctx context.Context, actor Actor, file string, text []byte) (*deskrun.FlowVersion, *flow.Definition, bool, error) {
	def, err := flow.Parse(file, text)
	if err != nil {
		return nil, nil, false, err
	}
	if hook := def.HookID(); hook != "" {
		all, err := s.Store.ListFlows(ctx)
		if err != nil {
			return nil, nil, false, err
		}
		for _, f := range all {
			if f.HookID == hook && f.Name != def.Name {
				return nil, nil, false, &deskrun.Error{Code: deskrun.CodeConflict, Field: "triggers.webhook.id",
					Message: fmt.Sprintf("flow %s already answers the webhook %q; give this one another id", f.Name, hook)}
			}
		}
		if _, err := s.Store.GetSecret(ctx, def.Triggers.Webhook.Secret); deskrun.IsCode(err, deskrun.CodeNotFound) {
			return nil, nil, false, &deskrun.Error{Code: deskrun.CodeFlowInvalid, Field: "triggers.webhook.secret",
				Message:    fmt.Sprintf("the webhook's secret %q is not in the secret store", def.Triggers.Webhook.Secret),
				Resolution: fmt.Sprintf("Store it first: deskrun secret set %s --value-stdin", def.Triggers.Webhook.Secret)}
		} else if err != nil {
			return nil, nil, false, err
		}
	}
	sum := sha256.Sum256(text)
	fv := &deskrun.FlowVersion{Name: def.Name, Definition: text, Digest: hex.EncodeToString(sum[:]), HookID: def.HookID(), CreatedAt: s.now()}
	created, err := s.Store.CreateFlowVersion(ctx, fv)
	if err != nil {
		return nil, nil, false, err
	}
	if created {
		s.Log.Info("flow applied", "flow", fv.Name, "version", fv.Version, "actor", actor.ID)
		s.armSchedule()
	}
	return fv, def, created, nil
}

// Flow returns a version of a flow (0: the latest) and its definition.
func (s *Service) Flow(ctx context.Context, name string, version int) (*deskrun.FlowVersion, *flow.Definition, error) {
	fv, err := s.Store.GetFlowVersion(ctx, name, version)
	if err != nil {
		return nil, nil, err
	}
	def, err := s.Definition(fv)
	return fv, def, err
}

// Flows lists the latest version of every flow.
func (s *Service) ListFlows(ctx context.Context) ([]*deskrun.FlowVersion, error) {
	return s.Store.ListFlows(ctx)
}

// DeleteFlow deletes a flow's versions; its runs stay as history.
func (s *Service) DeleteFlow(ctx context.Context, name string) error {
	if err := s.Store.DeleteFlow(ctx, name); err != nil {
		return err
	}
	s.armSchedule()
	return nil
}

// Definition parses a stored flow version (cached by digest), for callers
// that already hold the version, as a list does.
func (s *Service) Definition(fv *deskrun.FlowVersion) (*flow.Definition, error) {
	s.flows.mu.Lock()
	def, ok := s.flows.defs[fv.Digest]
	s.flows.mu.Unlock()
	if ok {
		return def, nil
	}
	def, err := flow.Parse(fv.Name+".yaml", fv.Definition)
	if err != nil {
		return nil, fmt.Errorf("stored flow %s v%d no longer parses: %w", fv.Name, fv.Version, err)
	}
	s.flows.mu.Lock()
	if s.flows.defs == nil {
		s.flows.defs = map[string]*flow.Definition{}
	}
	s.flows.defs[fv.Digest] = def
	s.flows.mu.Unlock()
	return def, nil
}

// StartFlowRun starts a run of the latest version of a flow: queued, and
// running at once unless the flow's concurrency limit is reached.
func (s *Service) StartFlowRun(ctx context.Context, actor Actor, name string, inputs map[string]any, trigger map[string]any) (*deskrun.FlowRun, error) {
	fv, def, err := s.Flow(ctx, name, 0)
	if err != nil {
		return nil, err
	}
	r, err := s.newFlowRun(fv, def, inputs, trigger)
	if err != nil {
		return nil, err
	}
	n := s.newAdmission(ctx, r, def)
	if err := s.Store.InTx(ctx, func(tx store.Tx) error { return n.create(ctx, tx) }); err != nil {
		return nil, err
	}
	s.Log.Info("flow run created", "flow_run_id", r.ID, "flow", r.Flow, "actor", actor.ID)
	s.admitted(ctx, n)
	return s.Store.GetFlowRun(ctx, r.ID)
}

func (s *Service) newFlowRun(fv *deskrun.FlowVersion, def *flow.Definition, inputs map[string]any, trigger map[string]any) (*deskrun.FlowRun, error) {
	bound, err := def.BindInputs(inputs)
	if err != nil {
		return nil, err
	}
	now := s.now()
	in, _ := json.Marshal(bound)
	tr, err := json.Marshal(trigger)
	if err != nil {
		return nil, fmt.Errorf("trigger: %w", err)
	}
	return &deskrun.FlowRun{ID: deskrun.NewID("f", now), Flow: fv.Name, Version: fv.Version, Trigger: tr, Inputs: in,
		State: deskrun.FlowRunQueued, CreatedAt: now, UpdatedAt: now}, nil
}

// admission carries a new flow run from its creation to its executor.
// Most runs are admitted at once: then the run is written already running,
// with its first step's first attempt, in the transaction that creates it
// (one commit for the run, its admission and its first step), and the
// executor starts from what is in hand instead of reading it back. Durability is the same as a step started by the executor: the
// attempt, and the desktop run id it will create, are committed before it
// acts, so a server that dies after the commit resumes the run from it.
type admission struct {
	s     *Service
	run   *deskrun.FlowRun
	def   *flow.Definition
	limit int
	// first is the first step's first attempt, decided before the
	// transaction (its `if` evaluated): written with the run if admitted.
	first *deskrun.FlowStep
	// admit: the run was written running (create's transaction committed).
	admit bool
}

// newAdmission prepares the admission of r, a new queued run of def.
func (s *Service) newAdmission(ctx context.Context, r *deskrun.FlowRun, def *flow.Definition) *admission {
	n := &admission{s: s, run: r, def: def}
	n.limit, _ = def.Limit()
	if len(def.Steps) == 0 {
		return n
	}
	step := &def.Steps[0]
	n.first = &deskrun.FlowStep{RunID: r.ID, StepID: step.ID, Attempt: 1, Kind: step.Kind(), State: deskrun.FlowStepRunning}
	if c := step.Cond(); c != nil {
		// As runStep does for a step with no attempt yet: skipped, or
		// failed when the condition cannot be evaluated.
		trigger, inputs := runVars(r)
		ok, err := c.EvalBool(ctx, flow.Vars(trigger, inputs, map[string]flow.StepState{}, nil))
		switch {
		case err != nil:
			n.first.State, n.first.Error = deskrun.FlowStepFailed, &deskrun.Error{Code: deskrun.CodeFlowStepFailed, Message: "if: " + err.Error()}
		case !ok:
			n.first.State = deskrun.FlowStepSkipped
		}
	}
	return n
}

// check reports whether the flow's concurrency limit is reached (by its
// queued and running runs, as overlap: skip counts them), and whether a
// run is queued already: a new run then queues behind it.
func (n *admission) check(ctx context.Context, tx store.Tx) (full, queued bool, err error) {
	f := store.FlowRunFilter{Flow: n.run.Flow, States: []deskrun.FlowRunState{deskrun.FlowRunQueued}, Limit: 1}
	if n.limit > 0 {
		f.States, f.Limit = append(f.States, deskrun.FlowRunRunning), n.limit
	}
	active, err := tx.ListFlowRuns(ctx, f)
	if err != nil {
		return false, false, err
	}
	queued = slices.ContainsFunc(active, func(r *deskrun.FlowRun) bool { return r.State == deskrun.FlowRunQueued })
	return n.limit > 0 && len(active) >= n.limit, queued, nil
}

// create writes the run in tx: running with its first attempt when the
// concurrency limit admits it at once (no run queued before it, fewer
// than the limit running), queued otherwise.
func (n *admission) create(ctx context.Context, tx store.Tx) error {
	full, queued, err := n.check(ctx, tx)
	if err != nil {
		return err
	}
	return n.write(ctx, tx, !full && !queued)
}

// write writes the run, running with its first attempt if admit, else
// queued.
func (n *admission) write(ctx context.Context, tx store.Tx, admit bool) error {
	r := n.run
	n.admit = false
	r.State, r.StartedAt, r.UpdatedAt = deskrun.FlowRunQueued, time.Time{}, r.CreatedAt
	if admit {
		now := n.s.now()
		r.State, r.StartedAt, r.UpdatedAt = deskrun.FlowRunRunning, now, now
	}
	if err := tx.CreateFlowRun(ctx, r); err != nil {
		return err
	}
	if admit && n.first != nil {
		st := n.first
		st.StartedAt, st.FinishedAt, st.DesktopRunID = r.StartedAt, time.Time{}, ""
		if st.State != deskrun.FlowStepRunning {
			st.FinishedAt = r.StartedAt
		} else if n.def.Steps[0].Desktop != nil {
			// Chosen and committed before the desktop run exists, as
			// runStep does: a restart re-attaches to it or creates it.
			st.DesktopRunID = deskrun.NewID("r", st.StartedAt)
		}
		if err := tx.StartFlowStep(ctx, st); err != nil {
			return err
		}
	}
	n.admit = admit
	return nil
}

// admitted goes on after create's transaction committed: the executor of
// a run admitted at once, or the queue's admission otherwise.
func (s *Service) admitted(ctx context.Context, n *admission) {
	if !n.admit {
		s.admitFlowRuns(ctx, n.run.Flow)
		return
	}
	// The executor owns what it is handed: the caller keeps a copy.
	r := *n.run
	var first *deskrun.FlowStep
	if n.first != nil {
		st := *n.first
		first = &st
	}
	s.advanceFresh(&freshRun{run: &r, def: n.def, first: first})
}

// admitFlowRuns moves queued runs of a flow to running, oldest first,
// while the flow's concurrency limit allows.
func (s *Service) admitFlowRuns(ctx context.Context, name string) {
	unlock := s.flows.admit.lock(name)
	defer unlock()
	limit := 0
	if _, def, err := s.Flow(ctx, name, 0); err == nil {
		limit, _ = def.Limit()
	}
	queued, err := s.Store.ListFlowRuns(ctx, store.FlowRunFilter{Flow: name, States: []deskrun.FlowRunState{deskrun.FlowRunQueued}, Oldest: true, Limit: 1000})
	if err != nil || len(queued) == 0 {
		return
	}
	n := 0 // running runs, counted up to the limit: all a limit needs
	if limit > 0 {
		running, err := s.Store.ListFlowRuns(ctx, store.FlowRunFilter{Flow: name, States: []deskrun.FlowRunState{deskrun.FlowRunRunning}, Limit: limit})
		if err != nil {
			return
		}
		n = len(running)
	}
	for _, r := range queued {
		if limit > 0 && n >= limit {
			return
		}
		now := s.now()
		r.State, r.StartedAt, r.UpdatedAt = deskrun.FlowRunRunning, now, now
		if ok, err := s.Store.UpdateFlowRun(ctx, r); err != nil || !ok {
			continue
		}
		n++
		s.wakeRun(r.ID)
		s.advance(r.ID)
	}
}

// freshRun is a run admitted at once, handed to its executor with what
// its creation wrote, so that the executor reads none of it back.
type freshRun struct {
	run *deskrun.FlowRun
	def *flow.Definition
	// first is the first step's attempt committed with the run, or nil;
	// if running, nothing acted on it yet.
	first *deskrun.FlowStep
}

// advance runs a flow run's executor unless this process runs it already.
func (s *Service) advance(id string) { s.startExecutor(id, nil) }

// advanceFresh runs the executor of a run just admitted.
func (s *Service) advanceFresh(f *freshRun) { s.startExecutor(f.run.ID, f) }

func (s *Service) startExecutor(id string, fresh *freshRun) {
	s.flows.mu.Lock()
	if s.flows.active == nil {
		s.flows.active = map[string]bool{}
	}
	ctx := s.flows.ctx
	if s.flows.active[id] || ctx == nil || ctx.Err() != nil {
		s.flows.mu.Unlock()
		return
	}
	s.flows.active[id] = true
	s.flows.wg.Add(1)
	s.flows.mu.Unlock()
	go func() {
		defer s.flows.wg.Done()
		flowName := s.execFlowRun(ctx, id, fresh)
		s.flows.mu.Lock()
		delete(s.flows.active, id)
		s.flows.mu.Unlock()
		s.runEnded(id) // its end, or the engine stopping: a waiter reads the run again
		if flowName != "" && ctx.Err() == nil {
			s.admitFlowRuns(ctx, flowName)
		}
	}()
}

// FlowRun returns a flow run and its steps; with wait > 0 it waits that
// long for the run to end. As Run, it is woken by the run's end (its
// executor's), not by each step.
func (s *Service) FlowRun(ctx context.Context, id string, wait time.Duration) (*deskrun.FlowRun, []*deskrun.FlowStep, error) {
	deadline := time.Now().Add(wait)
	for {
		ch := s.runEndWaiter(id)
		r, err := s.Store.GetFlowRun(ctx, id)
		if err != nil || r.State.Terminal() || time.Until(deadline) <= 0 {
			s.dropRunEndWaiter(id, ch)
			if err != nil {
				return nil, nil, err
			}
			steps, err := s.Store.ListFlowSteps(ctx, id)
			return r, steps, err
		}
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			s.dropRunEndWaiter(id, ch)
			return nil, nil, ctx.Err()
		}
		t.Stop()
		s.dropRunEndWaiter(id, ch)
	}
}

// ListFlowRuns lists flow runs.
func (s *Service) ListFlowRuns(ctx context.Context, f store.FlowRunFilter) ([]*deskrun.FlowRun, error) {
	return s.Store.ListFlowRuns(ctx, f)
}

// runVars decodes a run's trigger and inputs as step expressions see them.
func runVars(r *deskrun.FlowRun) (trigger any, inputs map[string]any) {
	_ = json.Unmarshal(r.Trigger, &trigger)
	inputs = map[string]any{}
	_ = json.Unmarshal(r.Inputs, &inputs)
	return trigger, inputs
}

// execFlowRun advances a run from its last committed step to its end and
// returns the flow's name (for admitting queued runs). fresh, when not
// nil, is the run as its admission wrote it: nothing is read back.
func (s *Service) execFlowRun(ctx context.Context, id string, fresh *freshRun) string {
	if fresh != nil {
		return s.execSteps(ctx, fresh.run, fresh.def, []*deskrun.FlowStep{fresh.first}, fresh.first)
	}
	r, err := s.Store.GetFlowRun(ctx, id)
	if err != nil || r.State != deskrun.FlowRunRunning {
		return ""
	}
	fv, err := s.Store.GetFlowVersion(ctx, r.Flow, r.Version)
	if err != nil {
		return s.failFlowRun(ctx, r, &deskrun.Error{Code: deskrun.CodeNotFound, Message: fmt.Sprintf("flow %s v%d was deleted before the run ended", r.Flow, r.Version)})
	}
	def, err := s.Definition(fv)
	if err != nil {
		return s.failFlowRun(ctx, r, &deskrun.Error{Code: deskrun.CodeFlowInvalid, Message: err.Error()})
	}
	recs, err := s.Store.ListFlowSteps(ctx, id)
	if err != nil {
		s.Log.Error("flow run steps", "flow_run_id", id, "err", err)
		return ""
	}
	return s.execSteps(ctx, r, def, recs, nil)
}

// failFlowRun ends r failed with e and returns the flow's name.
func (s *Service) failFlowRun(ctx context.Context, r *deskrun.FlowRun, e *deskrun.Error) string {
	now := s.now()
	r.State, r.Error, r.FinishedAt, r.UpdatedAt = deskrun.FlowRunFailed, e, now, now
	if _, err := s.Store.UpdateFlowRun(context.WithoutCancel(ctx), r); err != nil {
		s.Log.Error("fail flow run", "flow_run_id", r.ID, "err", err)
	}
	return r.Flow
}

// execSteps runs r's steps from recs, its committed attempts. fresh, if
// not nil, is one of them that this process committed and nothing acted
// on yet (a new run's first attempt).
func (s *Service) execSteps(ctx context.Context, r *deskrun.FlowRun, def *flow.Definition, recs []*deskrun.FlowStep, fresh *deskrun.FlowStep) string {
	fail := func(e *deskrun.Error) string { return s.failFlowRun(ctx, r, e) }
	trigger, inputs := runVars(r)
	last := map[string]*deskrun.FlowStep{}
	for _, st := range recs {
		if st == nil {
			continue
		}
		if p := last[st.StepID]; p == nil || st.Attempt > p.Attempt {
			last[st.StepID] = st
		}
	}
	states := map[string]flow.StepState{}
	var failed *deskrun.Error
	for i := range def.Steps {
		step := &def.Steps[i]
		vars := flow.Vars(trigger, inputs, states, nil)
		prev := last[step.ID]
		st, err := s.runStep(ctx, r, step, vars, prev, prev != nil && prev == fresh)
		if err != nil {
			if ctx.Err() == nil {
				s.Log.Error("flow step", "flow_run_id", r.ID, "step", step.ID, "err", err)
			}
			return "" // stopping: the run resumes at the next start
		}
		ss := flow.StepState{Status: string(st.State), Outputs: map[string]any{}}
		_ = json.Unmarshal(st.Outputs, &ss.Outputs)
		if st.Error != nil {
			ss.Error = st.Error.Message
		}
		states[step.ID] = ss
		if st.State == deskrun.FlowStepFailed && !step.ContinueOnError {
			e := *st.Error
			e.Message = fmt.Sprintf("step %s: %s", step.ID, e.Message)
			failed = &e
			break
		}
	}
	if failed != nil {
		return fail(failed)
	}
	outputs, err := def.RenderOutputs(ctx, flow.Vars(trigger, inputs, states, nil))
	if err != nil {
		return fail(&deskrun.Error{Code: deskrun.CodeFlowStepFailed, Message: err.Error()})
	}
	now := s.now()
	r.State, r.FinishedAt, r.UpdatedAt = deskrun.FlowRunSucceeded, now, now
	r.Outputs, _ = json.Marshal(outputs)
	if _, err := s.Store.UpdateFlowRun(context.WithoutCancel(ctx), r); err != nil {
		s.Log.Error("finish flow run", "flow_run_id", r.ID, "err", err)
	}
	return r.Flow
}

// retryable: only transient failures are retried. A definitive identity
// failure never is (the connection is broken; another attempt could lock
// the account out), nor is anything the same request would get again.
func retryable(e *deskrun.Error) bool {
	if e == nil || e.Definitive {
		return false
	}
	switch e.Code {
	case deskrun.CodeConnectionBroken, deskrun.CodeSealedCredentialInvalid, deskrun.CodeInvalid, deskrun.CodeNotFound,
		deskrun.CodeDesktopFlowInputInvalid, deskrun.CodeForbidden, deskrun.CodeJobCancelled, deskrun.CodeFlowStepInterrupted:
		return false
	case deskrun.CodeWindowsIdentityIncorrect:
		return e.Retryable // e.g. NoLogonServers
	case deskrun.CodeAgentLost, deskrun.CodeMachineOffline, deskrun.CodeNoCandidateMachine, deskrun.CodeDesktopFlowFailed,
		deskrun.CodeDesktopFlowTimeout:
		return true
	}
	return e.Retryable
}

// runStep brings one step to a committed result, resuming from prev (its
// latest committed attempt, or nil) and retrying transient failures. With
// fresh, prev was committed by this process and nothing acted on it: it is
// carried out, not resumed. An error means the engine is stopping; nothing
// was decided.
func (s *Service) runStep(ctx context.Context, r *deskrun.FlowRun, step *flow.Step, vars map[string]any, prev *deskrun.FlowStep, fresh bool) (*deskrun.FlowStep, error) {
	maxAttempts := 1
	if step.Retry != nil {
		maxAttempts += step.Retry.Max
	}
	attempt := 1
	var resume *deskrun.FlowStep
	if prev != nil {
		switch prev.State {
		case deskrun.FlowStepSucceeded, deskrun.FlowStepSkipped:
			return prev, nil
		case deskrun.FlowStepFailed:
			if prev.Attempt >= maxAttempts || !retryable(prev.Error) {
				return prev, nil
			}
			attempt = prev.Attempt + 1
		case deskrun.FlowStepRunning:
			switch {
			case fresh || step.Desktop != nil:
				resume = prev
				attempt = prev.Attempt
			case step.HTTP.Idempotent:
				prev.State, prev.FinishedAt = deskrun.FlowStepFailed, s.now()
				prev.Error = &deskrun.Error{Code: deskrun.CodeFlowStepInterrupted, Message: "the server stopped during the request; sent again (the step is idempotent)"}
				if _, err := s.Store.FinishFlowStep(ctx, prev); err != nil {
					return nil, err
				}
				attempt = prev.Attempt + 1
				maxAttempts = max(maxAttempts, attempt)
			default:
				prev.State, prev.FinishedAt = deskrun.FlowStepFailed, s.now()
				prev.Error = &deskrun.Error{Code: deskrun.CodeFlowStepInterrupted,
					Message:    "the server stopped while the request was in flight; it is not sent again because the step is not marked idempotent",
					Resolution: "Check the target system; mark the step idempotent: true if sending it twice is harmless."}
				if _, err := s.Store.FinishFlowStep(ctx, prev); err != nil {
					return nil, err
				}
				return prev, nil
			}
		}
	}
	if prev == nil && step.Cond() != nil {
		ok, err := step.Cond().EvalBool(ctx, vars)
		now := s.now()
		st := &deskrun.FlowStep{RunID: r.ID, StepID: step.ID, Attempt: 1, Kind: step.Kind(), State: deskrun.FlowStepSkipped, StartedAt: now, FinishedAt: now}
		if err != nil {
			st.State, st.Error = deskrun.FlowStepFailed, &deskrun.Error{Code: deskrun.CodeFlowStepFailed, Message: "if: " + err.Error()}
		}
		if err != nil || !ok {
			if err := s.Store.StartFlowStep(ctx, st); err != nil {
				return nil, err
			}
			return st, nil
		}
	}
	for {
		st := resume
		// A desktop run may exist only for an attempt a stopped server
		// started; one started here has not created its run yet.
		attached := st != nil && !fresh
		resume = nil
		if st == nil {
			st = &deskrun.FlowStep{RunID: r.ID, StepID: step.ID, Attempt: attempt, Kind: step.Kind(), State: deskrun.FlowStepRunning, StartedAt: s.now()}
			if step.Desktop != nil {
				st.DesktopRunID = deskrun.NewID("r", st.StartedAt)
			}
			if err := s.Store.StartFlowStep(ctx, st); err != nil {
				return nil, err
			}
			s.wakeRun(r.ID)
		}
		var outputs map[string]any
		var stepErr *deskrun.Error
		var err error
		if step.Desktop != nil {
			outputs, stepErr, err = s.desktopStep(ctx, r, step.Desktop, st, vars, attached)
		} else {
			outputs, stepErr, err = s.httpStep(ctx, step.HTTP, vars)
		}
		if err != nil {
			return nil, err
		}
		st.FinishedAt = s.now()
		if stepErr != nil {
			st.State, st.Error = deskrun.FlowStepFailed, stepErr
		} else {
			st.State = deskrun.FlowStepSucceeded
			st.Outputs, _ = json.Marshal(outputs)
		}
		if _, err := s.Store.FinishFlowStep(context.WithoutCancel(ctx), st); err != nil {
			return nil, err
		}
		s.wakeRun(r.ID)
		if st.State == deskrun.FlowStepSucceeded || st.Attempt >= maxAttempts || !retryable(stepErr) {
			return st, nil
		}
		backoff := time.Duration(step.Retry.Backoff) << min(st.Attempt-1, 10)
		if err := s.flowPolicy().Sleep(ctx, backoff); err != nil {
			return nil, err
		}
		attempt = st.Attempt + 1
	}
}

// desktopStep starts the step's desktop run (or, with attached, re-attaches
// to it if it exists) and waits for it by event.
func (s *Service) desktopStep(ctx context.Context, r *deskrun.FlowRun, ds *flow.DesktopStep, st *deskrun.FlowStep, vars map[string]any, attached bool) (map[string]any, *deskrun.Error, error) {
	var run *deskrun.Run
	var err error
	if attached {
		run, err = s.Store.GetRun(ctx, st.DesktopRunID)
	}
	if !attached || deskrun.IsCode(err, deskrun.CodeNotFound) {
		inputs, rerr := ds.RenderInputs(ctx, vars)
		if rerr != nil {
			return nil, &deskrun.Error{Code: deskrun.CodeFlowStepFailed, Message: rerr.Error()}, nil
		}
		req := wire.RunCreate{Connection: ds.Connection, Inputs: inputs, Version: ds.Version, Priority: ds.Priority}
		run, err = s.startRun(ctx, Actor{ID: "flow:" + r.Flow + "/" + r.ID}, ds.Flow, req, st.DesktopRunID)
		var de *deskrun.Error
		if errors.As(err, &de) {
			return nil, de, nil
		}
	}
	if err != nil {
		return nil, nil, err
	}
	wctx := ctx
	if ds.Timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithDeadline(ctx, st.StartedAt.Add(time.Duration(ds.Timeout)))
		defer cancel()
	}
	for !run.State.Terminal() {
		if run, err = s.Run(wctx, run.ID, time.Hour); err != nil {
			return nil, nil, err
		}
		if wctx.Err() != nil && ctx.Err() == nil && !run.State.Terminal() {
			_, _ = s.CancelRun(ctx, run.ID)
			return nil, &deskrun.Error{Code: deskrun.CodeDesktopFlowTimeout, Message: fmt.Sprintf("desktop run %s did not end within the step's timeout of %s; it was cancelled", run.ID, time.Duration(ds.Timeout))}, nil
		}
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
	}
	if run.State == deskrun.RunSucceeded {
		out := map[string]any{}
		_ = json.Unmarshal(run.Outputs, &out)
		return out, nil, nil
	}
	if run.Error != nil {
		e := *run.Error
		e.Message = fmt.Sprintf("desktop run %s: %s", run.ID, e.Message)
		return nil, &e, nil
	}
	return nil, &deskrun.Error{Code: deskrun.CodeDesktopFlowFailed, Message: fmt.Sprintf("desktop run %s ended %s", run.ID, run.State)}, nil
}

// maxResponse bounds what an http step keeps of a response.
const maxResponse = 1 << 20

func (s *Service) httpStep(ctx context.Context, h *flow.HTTPStep, vars map[string]any) (map[string]any, *deskrun.Error, error) {
	stepFail := func(retry bool, format string, args ...any) (map[string]any, *deskrun.Error, error) {
		return nil, &deskrun.Error{Code: deskrun.CodeFlowStepFailed, Message: fmt.Sprintf(format, args...), Retryable: retry}, nil
	}
	if h.UsesSecrets() {
		secrets, err := s.allSecrets(ctx)
		if err != nil {
			return stepFail(false, "secrets: %v", err)
		}
		vars = maps.Clone(vars) // the caller's vars never hold the secrets
		vars["secrets"] = secrets
	}
	u, headers, body, err := h.Request(ctx, vars)
	if err != nil {
		return stepFail(false, "%v", err)
	}
	pu, err := url.Parse(u)
	if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
		return stepFail(false, "the URL does not parse as http(s)://HOST/…")
	}
	rctx := ctx
	if h.Timeout > 0 {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, time.Duration(h.Timeout))
		defer cancel()
	}
	req, err := http.NewRequestWithContext(rctx, h.Method, u, bytes.NewReader(body))
	if err != nil {
		return stepFail(false, "%s %s: %v", h.Method, pu.Host, err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("User-Agent", "deskrun-flow/1")
	resp, err := s.flowPolicy().HTTPClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		// The error text names the URL, which may carry a secret: name
		// the host only.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return stepFail(true, "%s %s: %v", h.Method, pu.Host, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	var parsed any = string(raw)
	var js any
	if json.Unmarshal(raw, &js) == nil {
		parsed = js
	}
	hdr := map[string]any{}
	for k := range resp.Header {
		hdr[strings.ToLower(k)] = resp.Header.Get(k)
	}
	out := map[string]any{"status": int64(resp.StatusCode), "headers": hdr, "body": parsed}
	ok := resp.StatusCode >= 200 && resp.StatusCode < 300
	if len(h.ExpectStatus) > 0 {
		ok = slices.Contains(h.ExpectStatus, resp.StatusCode)
	}
	if !ok {
		snippet := string(raw)
		if len(snippet) > 200 {
			snippet = snippet[:200] + "…"
		}
		return stepFail(resp.StatusCode >= 500 || resp.StatusCode == 429, "%s %s answered %d: %s", h.Method, pu.Host, resp.StatusCode, snippet)
	}
	return out, nil, nil
}

// FireSchedules starts the runs of every schedule tick due at s.now() and
// re-arms the timer. Each tick is claimed in the transaction that creates
// its run, so with several servers on one store a tick runs once.
func (s *Service) FireSchedules(ctx context.Context) (int, error) {
	flows, err := s.Store.ListFlows(ctx)
	if err != nil {
		return 0, err
	}
	fired := 0
	p := s.flowPolicy()
	now := s.now()
	for _, fv := range flows {
		def, err := s.Definition(fv)
		if err != nil || def.Schedule() == nil {
			continue
		}
		base, err := s.Store.LastScheduleTick(ctx, fv.Name)
		if err != nil {
			return fired, err
		}
		if base.IsZero() {
			base = fv.CreatedAt
		}
		var due time.Time
		for t, n := def.Schedule().Next(base), 0; !t.After(now) && n < 1_000_000; t, n = def.Schedule().Next(t), n+1 {
			due = t
		}
		if due.IsZero() {
			continue
		}
		missed := now.Sub(due) > p.MisfireGrace
		if missed && def.Triggers.Schedule.Missed != flow.MissedRunOnce {
			if _, err := s.Store.ClaimScheduleTick(ctx, fv.Name, due, ""); err != nil {
				return fired, err
			}
			s.Log.Warn("schedule tick missed, skipped", "flow", fv.Name, "tick", due)
			continue
		}
		r, err := s.newFlowRun(fv, def, def.Triggers.Schedule.Inputs, map[string]any{"kind": "schedule", "tick": due.Format(time.RFC3339), "missed": missed})
		if err != nil {
			s.Log.Error("schedule run", "flow", fv.Name, "err", err)
			continue
		}
		_, overlap := def.Limit()
		n := s.newAdmission(ctx, r, def)
		created := false
		err = s.Store.InTx(ctx, func(tx store.Tx) error {
			created = false
			full, queued, err := n.check(ctx, tx)
			if err != nil {
				return err
			}
			runID := r.ID
			if full && overlap == flow.OverlapSkip {
				runID = ""
			}
			ok, err := tx.ClaimScheduleTick(ctx, fv.Name, due, runID)
			if err != nil || !ok || runID == "" {
				return err
			}
			created = true
			return n.write(ctx, tx, !full && !queued)
		})
		if err != nil {
			return fired, err
		}
		if created {
			fired++
			s.Log.Info("schedule tick", "flow", fv.Name, "tick", due, "flow_run_id", r.ID)
			s.admitted(ctx, n)
		}
	}
	s.armSchedule()
	return fired, nil
}

// armSchedule sets one timer for the next tick of all flows.
func (s *Service) armSchedule() {
	if s.Flows.NoTimer {
		return
	}
	s.flows.mu.Lock()
	ctx := s.flows.ctx
	s.flows.mu.Unlock()
	if ctx == nil || ctx.Err() != nil {
		return
	}
	flows, err := s.Store.ListFlows(ctx)
	if err != nil {
		return
	}
	var next time.Time
	for _, fv := range flows {
		def, err := s.Definition(fv)
		if err != nil || def.Schedule() == nil {
			continue
		}
		base, _ := s.Store.LastScheduleTick(ctx, fv.Name)
		if base.IsZero() {
			base = fv.CreatedAt
		}
		t := def.Schedule().Next(base)
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	s.flows.mu.Lock()
	defer s.flows.mu.Unlock()
	if s.flows.timer != nil {
		s.flows.timer.Stop()
	}
	if next.IsZero() {
		return
	}
	s.flows.timer = time.AfterFunc(max(next.Sub(s.now()), 0)+time.Millisecond, func() {
		if _, err := s.FireSchedules(ctx); err != nil && ctx.Err() == nil {
			s.Log.Error("fire schedules", "err", err)
		}
	})
}

// Webhook starts a run of the flow whose webhook is hookID, after checking
// the signature (HMAC-SHA256 over "t.body", as notify signs) and its age.
// A request whose signature was seen already is a replay and refused; one
// whose Idempotency-Key was seen returns the first delivery's run and
// created false.
func (s *Service) Webhook(ctx context.Context, hookID string, header http.Header, body []byte) (*deskrun.FlowRun, bool, error) {
	all, err := s.Store.ListFlows(ctx)
	if err != nil {
		return nil, false, err
	}
	var fv *deskrun.FlowVersion
	for _, f := range all {
		if f.HookID == hookID {
			fv = f
		}
	}
	if fv == nil {
		return nil, false, &deskrun.Error{Code: deskrun.CodeNotFound, Message: fmt.Sprintf("no flow answers the webhook %q", hookID)}
	}
	def, err := s.Definition(fv)
	if err != nil {
		return nil, false, err
	}
	secret, err := s.secretValue(ctx, def.Triggers.Webhook.Secret)
	if err != nil {
		return nil, false, &deskrun.Error{Code: deskrun.CodeUnavailable, Message: fmt.Sprintf("the webhook's secret %q cannot be read: %v", def.Triggers.Webhook.Secret, err)}
	}
	sig := header.Get(notify.SignatureHeader)
	bad := func(msg string) error {
		return &deskrun.Error{Code: deskrun.CodeWebhookSignatureInvalid, Message: msg,
			Resolution: "Sign the body: X-Deskrun-Signature: t=UNIX,v1=hex(HMAC-SHA256(secret, \"UNIX.\" + body))."}
	}
	if sig == "" {
		return nil, false, bad("the request has no " + notify.SignatureHeader + " header")
	}
	if err := notify.Verify(secret, sig, body, s.now(), s.flowPolicy().WebhookTolerance); err != nil {
		return nil, false, bad(err.Error())
	}
	var parsed any = string(body)
	var js any
	if json.Unmarshal(body, &js) == nil {
		parsed = js
	}
	headers := map[string]any{}
	for k := range header {
		lk := strings.ToLower(k)
		if lk == strings.ToLower(notify.SignatureHeader) || lk == "authorization" || lk == "cookie" {
			continue
		}
		headers[lk] = header.Get(k)
	}
	key := header.Get("Idempotency-Key")
	trigger := map[string]any{"kind": "webhook", "hook": hookID, "body": parsed, "headers": headers, "time": s.now().Format(time.RFC3339Nano)}
	if key != "" {
		trigger["idempotency_key"] = key
	}
	r, err := s.newFlowRun(fv, def, nil, trigger)
	if err != nil {
		return nil, false, err
	}
	n := s.newAdmission(ctx, r, def)
	first := ""
	_, v1, _ := strings.Cut(sig, "v1=")
	err = s.Store.InTx(ctx, func(tx store.Tx) error {
		first = ""
		if key != "" {
			id, created, err := tx.RecordWebhookDelivery(ctx, hookID, "key:"+key, r.ID, s.now())
			if err != nil || !created {
				first = id
				return err
			}
		}
		if _, created, err := tx.RecordWebhookDelivery(ctx, hookID, "sig:"+v1, r.ID, s.now()); err != nil {
			return err
		} else if !created {
			return bad("this signed request was delivered already (a replay); sign each delivery with its own timestamp")
		}
		return n.create(ctx, tx)
	})
	if err != nil {
		return nil, false, err
	}
	if first != "" {
		r, err := s.Store.GetFlowRun(ctx, first)
		return r, false, err
	}
	id := r.ID
	s.Log.Info("webhook run", "hook", hookID, "flow", fv.Name, "flow_run_id", id)
	s.admitted(ctx, n)
	r, err = s.Store.GetFlowRun(ctx, id)
	return r, true, err
}

// MaxWebhookBody is the body limit of /hooks/{id}.
func (s *Service) MaxWebhookBody() int64 { return s.flowPolicy().MaxWebhookBody }
