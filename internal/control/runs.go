package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/desktopflow"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/store"
	"github.com/deskrun/deskrun/internal/wire"
)

// RunPolicy tunes the run queue.
type RunPolicy struct {
	// QueueTimeout: a run not placed within it fails with NoCandidateMachine
	// and the last reason it could not be placed.
	QueueTimeout time.Duration
	// MaxLogBytes bounds the output stored for one run; past it the rest is
	// dropped and a note says so.
	MaxLogBytes int64
}

// DefaultRunPolicy returns the defaults (the commercial product's queue
// limit is 12 h).
func DefaultRunPolicy() RunPolicy {
	return RunPolicy{QueueTimeout: 12 * time.Hour, MaxLogBytes: 64 << 20}
}

// scheduler places queued runs on machines. It runs one pass at a time on
// its own goroutine, whenever something that can change a placement
// happens (a run is created or ends, an agent connects, a connection is
// fixed, a queue deadline passes): it is woken by events, never by polling.
type scheduler struct {
	kick     chan struct{}
	deadline *time.Timer

	mu       sync.Mutex
	jobRuns  map[string]string          // job id → run id, for log chunks
	logBytes map[string]int64           // run id → bytes stored
	waiters  map[string][]chan struct{} // run id → closed when the run changes
	enders   map[string][]chan struct{} // run id → closed when the run ends
	started  bool
}

// StartScheduler starts placing runs. It returns at once; the scheduler
// stops when ctx ends.
func (s *Service) StartScheduler(ctx context.Context) {
	s.sched.mu.Lock()
	if s.sched.started {
		s.sched.mu.Unlock()
		return
	}
	s.sched.started = true
	s.sched.kick = make(chan struct{}, 1)
	s.sched.jobRuns, s.sched.logBytes = map[string]string{}, map[string]int64{}
	s.sched.mu.Unlock()
	if err := s.reconcileRuns(ctx); err != nil {
		s.Log.Error("reconcile runs", "err", err)
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				if t := s.sched.deadline; t != nil {
					t.Stop()
				}
				return
			case <-s.sched.kick:
				if err := s.placeRuns(ctx); err != nil && ctx.Err() == nil {
					s.Log.Error("place runs", "err", err)
				}
			}
		}
	}()
	s.Kick()
}

// reconcileRuns settles runs a crash left between two writes: a placed
// run whose job was never created goes back to the queue, and a run whose
// job already ended gets that ending (recorded once: UpdateRun refuses a
// terminal run).
func (s *Service) reconcileRuns(ctx context.Context) error {
	active, err := s.Store.ListRuns(ctx, store.RunFilter{States: []deskrun.RunState{deskrun.RunAssigned, deskrun.RunLoggingOn, deskrun.RunRunning}, Limit: 100000})
	if err != nil {
		return err
	}
	for _, r := range active {
		j, err := s.Store.GetJob(ctx, r.JobID)
		switch {
		case deskrun.IsCode(err, deskrun.CodeNotFound):
			r.State, r.MachineID, r.JobID, r.AssignedAt, r.UpdatedAt = deskrun.RunQueued, "", "", time.Time{}, s.now()
			if _, err := s.Store.UpdateRun(ctx, r); err != nil {
				return err
			}
		case err != nil:
			return err
		case j.State.Terminal():
			s.sched.mu.Lock()
			s.sched.jobRuns[j.ID] = r.ID
			s.sched.mu.Unlock()
			if err := s.finishRunOfJob(ctx, j); err != nil {
				return err
			}
		default:
			s.sched.mu.Lock()
			s.sched.jobRuns[j.ID] = r.ID
			s.sched.mu.Unlock()
		}
	}
	return nil
}

// Kick asks for a placement pass (coalesced).
func (s *Service) Kick() {
	s.sched.mu.Lock()
	kick := s.sched.kick // set by StartScheduler; nil before it
	s.sched.mu.Unlock()
	if kick == nil {
		return
	}
	select {
	case kick <- struct{}{}:
	default:
	}
}

// StartRun queues a run of a desktop flow through a connection.
func (s *Service) StartRun(ctx context.Context, actor Actor, flowName string, req wire.RunCreate) (*deskrun.Run, error) {
	return s.startRun(ctx, actor, flowName, req, "")
}

// startRun is StartRun with the run's id chosen by the caller (a flow
// step records it before the run exists, so a restart finds the run).
func (s *Service) startRun(ctx context.Context, actor Actor, flowName string, req wire.RunCreate, id string) (*deskrun.Run, error) {
	flow, err := s.Store.GetDesktopFlow(ctx, flowName, req.Version)
	if err != nil {
		return nil, err
	}
	var m desktopflow.Manifest
	if err := json.Unmarshal(flow.Manifest, &m); err != nil {
		return nil, fmt.Errorf("manifest of %s v%d: %w", flow.Name, flow.Version, err)
	}
	inputs, err := m.BindInputs(req.Inputs)
	if err != nil {
		return nil, err
	}
	inJSON, _ := json.Marshal(inputs)
	if req.Connection == "" {
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "connection", Message: "a run needs a connection: the user it runs as"}
	}
	conn, err := s.Connection(ctx, req.Connection)
	if err != nil {
		return nil, err
	}
	prio := deskrun.Priority(req.Priority)
	switch prio {
	case "":
		prio = deskrun.PriorityNormal
	case deskrun.PriorityHigh, deskrun.PriorityNormal:
	default:
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "priority", Message: fmt.Sprintf("priority %q: use high or normal", req.Priority)}
	}
	now := s.now()
	if id == "" {
		id = deskrun.NewID("r", now)
	}
	r := &deskrun.Run{ID: id, Flow: flow.Name, Version: flow.Version, Digest: flow.Digest,
		ConnectionID: conn.ID, Priority: prio, Inputs: inJSON, State: deskrun.RunQueued, Screenshot: req.Screenshot,
		CreatedAt: now, UpdatedAt: now, QueueDeadline: now.Add(s.Runs.QueueTimeout)}
	if conn.State == deskrun.ConnectionBroken {
		// The breaker: the run is recorded and fails at once; the machine
		// sees no attempt with these credentials.
		m, _ := s.Store.GetMachine(ctx, conn.Target)
		if m == nil {
			m = &deskrun.Machine{ID: conn.Target, Name: conn.Target}
		}
		r.State, r.Error, r.FinishedAt = deskrun.RunFailed, s.brokenError(conn, m), now
		if err := s.Store.CreateRun(ctx, r); err != nil {
			return nil, err
		}
		s.audit(ctx, deskrun.AuditEvent{Actor: actor.ID, Action: deskrun.AuditLogonRefused, ConnectionID: conn.ID, ConnectionName: conn.Name,
			MachineID: conn.Target, Result: "refused", Reason: conn.Reason, Detail: "run " + r.ID + " failed at once: the connection is broken"})
		return r, nil
	}
	if err := s.Store.CreateRun(ctx, r); err != nil {
		return nil, err
	}
	s.Kick()
	return r, nil
}

// placeRuns is one placement pass: queued runs, high priority first then
// oldest, each go to their connection's machine when it is online, has a
// free slot and (unattended) the user has no other run there. A run that
// cannot be placed is skipped, so it never blocks runs for other machines;
// it gets the reason it waits, and fails with NoCandidateMachine and that
// reason once its queue deadline has passed. A run whose connection is
// deleted or broken, or whose machine is deleted, fails.
//
// A pass runs after every start and every end, so its cost must not grow
// with the queue (reading every queued and every active run on each pass
// costs a fifth of the server's CPU with 1,000 runs queued for 8 slots).
// So a pass reads:
//
//   - the queue's shape, not its runs: CountQueuedRuns gives, from an
//     index, the connections that have queued runs and the reasons those
//     runs show;
//   - the load, not the active runs: ActiveRunLoad gives each machine's
//     runs in flight and the users with an unattended one there;
//   - runs only where they can go: pages of the queued runs of the
//     connections whose machine is online with a free slot and whose user
//     is free there, in placement order. Every run read is placed unless
//     its machine filled up earlier in the page, so a pass reads about as
//     many runs as it places, and stops when no such connection is left;
//   - the runs whose deadline has passed, when the earliest deadline
//     (read from an index on queue_deadline) says there are some.
//
// The runs it does not read still get their reason, because a queued
// run's reason depends only on its connection (machine, username, run
// mode) and on that machine's state, never on the run itself: reason
// (offline, then busy, then session conflict) is evaluated once per
// connection, with the machine's state at the end of the pass, and
// written by one UPDATE to the connection's queued runs whose reason
// differs — issued only when CountQueuedRuns showed such runs. A run read
// for placement and not placed (its machine filled up) gets the reason of
// its connection the same way. Deadlines use the same per-connection
// reason, so the error names what kept the run waiting. Runs created
// during a pass are not seen by it; their creation kicks another.
func (s *Service) placeRuns(ctx context.Context) error {
	counts, err := s.Store.CountQueuedRuns(ctx)
	if err != nil || len(counts) == 0 {
		return err
	}
	load, err := s.Store.ActiveRunLoad(ctx)
	if err != nil {
		return err
	}
	p := &placement{s: s, load: load, conns: map[string]*deskrun.Connection{}, machines: map[string]*deskrun.Machine{}, online: map[string]bool{},
		manifests: map[flowVersion]*desktopflow.Manifest{}}
	now := s.now()

	// The connections with queued runs: those that cannot run fail them.
	reasons := map[string][]string{} // connection id → the reasons its queued runs show
	for _, qc := range counts {
		reasons[qc.ConnectionID] = append(reasons[qc.ConnectionID], qc.Reason)
	}
	ids := make([]string, 0, len(reasons))
	for id := range reasons {
		ids = append(ids, id)
	}
	cs, err := s.Store.GetConnections(ctx, ids)
	if err != nil {
		return err
	}
	for _, c := range cs {
		p.conns[c.ID] = c
	}
	var live []*deskrun.Connection
	for _, id := range ids {
		c, ok := p.conns[id]
		if !ok {
			if err := s.failQueued(ctx, id, &deskrun.Error{Code: deskrun.CodeNotFound, Message: "the run's connection was deleted"}); err != nil {
				return err
			}
			continue
		}
		m, err := p.machine(ctx, c.Target)
		if err != nil && !deskrun.IsCode(err, deskrun.CodeNotFound) {
			return err
		}
		var e *deskrun.Error
		switch {
		case c.State == deskrun.ConnectionBroken:
			if m == nil {
				m = &deskrun.Machine{ID: c.Target, Name: c.Target}
			}
			e = s.brokenError(c, m)
		case m == nil:
			e = &deskrun.Error{Code: deskrun.CodeNoCandidateMachine, Message: "the connection's machine no longer exists"}
		}
		if e != nil {
			if err := s.failQueued(ctx, id, e); err != nil {
				return err
			}
			continue
		}
		live = append(live, c)
	}

	// Place, a page at a time, only where a run can go.
	for _, prio := range []deskrun.Priority{deskrun.PriorityHigh, deskrun.PriorityNormal} {
		after := ""
		for {
			var open []string
			free := 0
			counted := map[string]bool{}
			for _, c := range live {
				m := p.machines[c.Target]
				if p.reason(c, m) != "" {
					continue
				}
				open = append(open, c.ID)
				if !counted[m.ID] {
					counted[m.ID] = true
					free += p.free(m)
				}
			}
			if len(open) == 0 {
				break
			}
			page, err := s.Store.ListQueuedRuns(ctx, store.QueueFilter{Priority: prio, AfterID: after, ConnectionIDs: open, Limit: free})
			if err != nil {
				return err
			}
			// Decide the page's placements (counting each as placed, so
			// the next run of the page sees the slot taken), then store
			// and push them: one commit per machine, the machines at once.
			var batch []*assignment
			for _, r := range page {
				after = r.ID
				c := p.conns[r.ConnectionID]
				m := p.machines[c.Target]
				if p.reason(c, m) != "" {
					continue // its machine filled up, or its user took a run there, earlier in this page
				}
				a, err := p.prepareAssignment(ctx, r, c, m)
				if err != nil {
					s.Log.Error("assign run", "run_id", r.ID, "err", err)
					continue
				}
				if a == nil {
					continue // failed (its flow version or credential is gone)
				}
				batch = append(batch, a)
				p.load.Active[m.ID]++
				if c.RunMode == deskrun.RunUnattended {
					p.load.Unattended[store.MachineUser{MachineID: m.ID, Username: c.Username}] = true
				}
			}
			for _, a := range s.assignAll(ctx, batch) {
				// Not placed after all (cancelled meanwhile, or not
				// stored): the slot is free again.
				p.load.Active[a.m.ID]--
				if a.c.RunMode == deskrun.RunUnattended {
					delete(p.load.Unattended, store.MachineUser{MachineID: a.m.ID, Username: a.c.Username})
				}
			}
			if len(page) < free {
				break
			}
		}
	}

	// Deadlines: a run that could not be placed by now fails with the
	// reason it waits for. The earliest deadline says whether any passed.
	next, err := s.Store.NextQueueDeadline(ctx, time.Time{})
	if err != nil {
		return err
	}
	var expired []*deskrun.Run
	if !next.IsZero() && !next.After(now) {
		if expired, err = s.Store.ListQueuedRuns(ctx, store.QueueFilter{DeadlineBy: now, Limit: 10000}); err != nil {
			return err
		}
		if next, err = s.Store.NextQueueDeadline(ctx, now); err != nil {
			return err
		}
	}
	for _, r := range expired {
		c, err := p.conn(ctx, r.ConnectionID)
		if err != nil {
			continue // deleted during the pass: the next pass fails the run
		}
		m, err := p.machine(ctx, c.Target)
		if err != nil {
			continue
		}
		reason := p.reason(c, m)
		if reason == "" {
			continue // placeable, but its assignment failed: it stays queued
		}
		e := identity.Fail(deskrun.CodeNoCandidateMachine, nil)
		e.Machine = m.Name
		e.Message = fmt.Sprintf("no machine could take the run within %s; last reason: %s", s.Runs.QueueTimeout, reason)
		s.failRun(ctx, r, e)
	}

	// Reasons, one statement per connection whose runs show another.
	for _, c := range live {
		reason := p.reason(c, p.machines[c.Target])
		if reason == "" || !slices.ContainsFunc(reasons[c.ID], func(r string) bool { return r != reason }) {
			continue
		}
		ids, err := s.Store.SetPlacementReason(ctx, c.ID, reason, now)
		if err != nil {
			return err
		}
		for _, id := range ids {
			s.wakeRun(id)
		}
	}

	if !next.IsZero() {
		d := max(next.Sub(s.now()), 0) + time.Millisecond
		if s.sched.deadline == nil {
			s.sched.deadline = time.AfterFunc(d, s.Kick)
		} else {
			s.sched.deadline.Reset(d)
		}
	}
	return nil
}

// placement is what one pass knows: connections, machines and desktop
// flow manifests read once, presence asked once, and the load as the pass
// changes it.
type placement struct {
	s         *Service
	load      *store.RunLoad
	conns     map[string]*deskrun.Connection
	machines  map[string]*deskrun.Machine
	online    map[string]bool
	manifests map[flowVersion]*desktopflow.Manifest
}

type flowVersion struct {
	name    string
	version int
}

func (p *placement) conn(ctx context.Context, id string) (*deskrun.Connection, error) {
	if c, ok := p.conns[id]; ok {
		return c, nil
	}
	c, err := p.s.Store.GetConnection(ctx, id)
	if err == nil {
		p.conns[id] = c
	}
	return c, err
}

func (p *placement) machine(ctx context.Context, id string) (*deskrun.Machine, error) {
	if m, ok := p.machines[id]; ok {
		return m, nil
	}
	m, err := p.s.Store.GetMachine(ctx, id)
	if err != nil {
		return nil, err
	}
	p.machines[id] = m
	p.online[id] = p.s.Hub.Online(id)
	return m, nil
}

// manifest reads a desktop flow version's manifest, once per pass: the
// runs a pass places are mostly of a few flows.
func (p *placement) manifest(ctx context.Context, name string, version int) (*desktopflow.Manifest, error) {
	k := flowVersion{name, version}
	if man, ok := p.manifests[k]; ok {
		return man, nil
	}
	f, err := p.s.Store.GetDesktopFlow(ctx, name, version)
	if err != nil {
		return nil, err
	}
	man := new(desktopflow.Manifest)
	if err := json.Unmarshal(f.Manifest, man); err != nil {
		return nil, fmt.Errorf("manifest of %s v%d: %w", name, version, err)
	}
	p.manifests[k] = man
	return man, nil
}

func (p *placement) free(m *deskrun.Machine) int { return max(m.Slots, 1) - p.load.Active[m.ID] }

// reason says why a run through c cannot go to m now, or "" if it can.
func (p *placement) reason(c *deskrun.Connection, m *deskrun.Machine) string {
	switch {
	case !p.online[m.ID]:
		return fmt.Sprintf("machine %s is offline", m.Name)
	case p.free(m) <= 0:
		return fmt.Sprintf("machine %s is busy (%d of %d slots in use)", m.Name, p.load.Active[m.ID], max(m.Slots, 1))
	case c.RunMode == deskrun.RunUnattended && p.load.Unattended[store.MachineUser{MachineID: m.ID, Username: c.Username}]:
		return fmt.Sprintf("user %s already has an unattended run on %s (session conflict)", c.Username, m.Name)
	}
	return ""
}

// failQueued fails every queued run of a connection with e.
func (s *Service) failQueued(ctx context.Context, connectionID string, e *deskrun.Error) error {
	runs, err := s.Store.ListQueuedRuns(ctx, store.QueueFilter{ConnectionIDs: []string{connectionID}, Limit: 10000})
	if err != nil {
		return err
	}
	for _, r := range runs {
		s.failRun(ctx, r, e)
	}
	return nil
}

// assignment is a run the scheduler places, with the job that carries it.
type assignment struct {
	r *deskrun.Run
	c *deskrun.Connection
	m *deskrun.Machine
	j *deskrun.Job
}

// prepareAssignment builds the job that carries r to m. It fails the run,
// and returns nil, when the flow version or the credential for m is gone;
// any other error leaves the run queued for the next pass.
func (p *placement) prepareAssignment(ctx context.Context, r *deskrun.Run, c *deskrun.Connection, m *deskrun.Machine) (*assignment, error) {
	s := p.s
	man, err := p.manifest(ctx, r.Flow, r.Version)
	if deskrun.IsCode(err, deskrun.CodeNotFound) {
		s.failRun(ctx, r, withMachine(err, m.Name).(*deskrun.Error))
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	cred, ok := c.CredentialFor(m.ID)
	if !ok {
		e := identity.Fail(deskrun.CodeSealedCredentialInvalid, nil)
		e.Message, e.Machine = "the connection has no credential sealed for machine "+m.Name, m.Name
		s.failRun(ctx, r, e)
		return nil, nil
	}
	var inputs map[string]any
	_ = json.Unmarshal(r.Inputs, &inputs)
	dp := wire.DesktopPayload{RunID: r.ID, Flow: r.Flow, Version: r.Version, Digest: r.Digest,
		Credential: wire.ValidatePayload{ConnectionID: c.ID, ConnectionName: c.Name, MachineID: m.ID, Username: c.Username,
			LogonType: c.LogonType, KeyID: cred.KeyID, Ciphertext: cred.Ciphertext},
		RunMode: string(c.RunMode), Run: man.Run, Desktop: man.Desktop, TimeoutMS: time.Duration(man.Timeout).Milliseconds(),
		Inputs: inputs, Screenshot: r.Screenshot, Sessions: m.Sessions}
	for _, o := range man.Outputs {
		dp.Outputs = append(dp.Outputs, wire.OutputDecl{Name: o.Name, Type: string(o.Type), Required: o.Required})
	}
	payload, err := json.Marshal(dp)
	if err != nil {
		return nil, err
	}
	now := s.now()
	j := &deskrun.Job{ID: deskrun.NewID("j", now), MachineID: m.ID, Kind: wire.JobDesktop, Payload: payload}
	r.State, r.MachineID, r.JobID, r.AssignedAt, r.UpdatedAt, r.PlacementReason = deskrun.RunAssigned, m.ID, j.ID, now, now, ""
	return &assignment{r: r, c: c, m: m, j: j}, nil
}

// assignAll stores and pushes the assignments: those of one machine in one
// transaction (store.AssignRun for each, under the hub's machine lock),
// the machines concurrently, so that their commits share one (the store
// batches concurrent transactions). It returns the assignments that were
// not placed: cancelled meanwhile, or not stored (logged).
func (s *Service) assignAll(ctx context.Context, as []*assignment) (notPlaced []*assignment) {
	if len(as) == 0 {
		return nil
	}
	byMachine := map[string][]*assignment{}
	var order []string
	for _, a := range as {
		if byMachine[a.m.ID] == nil {
			order = append(order, a.m.ID)
		}
		byMachine[a.m.ID] = append(byMachine[a.m.ID], a)
	}
	// Known before the push: the agent's first progress may come at once.
	s.sched.mu.Lock()
	for _, a := range as {
		s.sched.jobRuns[a.j.ID] = a.r.ID
	}
	s.sched.mu.Unlock()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, id := range order {
		group := byMachine[id]
		wg.Add(1)
		go func() {
			defer wg.Done()
			js := make([]*deskrun.Job, len(group))
			for i, a := range group {
				js[i] = a.j
			}
			stored, err := s.Hub.SubmitAll(ctx, id, js, func(ctx context.Context, js []*deskrun.Job) ([]bool, error) {
				ok := make([]bool, len(js))
				err := s.Store.InTx(ctx, func(tx store.Tx) error {
					for i, a := range group {
						var err error
						if ok[i], err = tx.AssignRun(ctx, a.r, js[i]); err != nil {
							return err
						}
					}
					return nil
				})
				return ok, err
			})
			if err != nil {
				s.Log.Error("assign runs", "machine", id, "runs", len(group), "err", err)
			}
			mu.Lock()
			defer mu.Unlock()
			for i, a := range group {
				if err == nil && stored[i] {
					s.wakeRun(a.r.ID)
					continue
				}
				notPlaced = append(notPlaced, a)
			}
		}()
	}
	wg.Wait()
	if len(notPlaced) > 0 {
		s.sched.mu.Lock()
		for _, a := range notPlaced {
			delete(s.sched.jobRuns, a.j.ID)
		}
		s.sched.mu.Unlock()
	}
	return notPlaced
}

func (s *Service) failRun(ctx context.Context, r *deskrun.Run, e *deskrun.Error) {
	now := s.now()
	r.State, r.Error, r.FinishedAt, r.UpdatedAt = deskrun.RunFailed, e, now, now
	if _, err := s.Store.UpdateRun(ctx, r); err != nil {
		s.Log.Error("fail run", "run_id", r.ID, "err", err)
	}
	s.runEnded(r.ID)
}

// runForJob finds the run a job carries, reading through st (the store,
// or the transaction the caller is in). The scheduler records every job it
// pushes, and at start every job of a run in flight, so a job it does not
// know carries no run: the jobs of connection tests and no-ops cost no
// store read here.
func (s *Service) runForJob(ctx context.Context, st store.Tx, jobID string) (*deskrun.Run, error) {
	s.sched.mu.Lock()
	runID, ok := s.sched.jobRuns[jobID]
	started := s.sched.started
	s.sched.mu.Unlock()
	switch {
	case !started:
		return st.GetRunByJob(ctx, jobID)
	case !ok:
		return nil, &deskrun.Error{Code: deskrun.CodeNotFound, Message: "job " + jobID + " carries no run"}
	}
	return st.GetRun(ctx, runID)
}

// AgentConnected is the hub's event: a machine may take runs again.
func (s *Service) AgentConnected(context.Context, string) { s.Kick() }

// JobProgress maps an agent's stage messages to run states. It writes
// through tx, the hub's transaction that records the progress line (and
// the job's ack), so the run's new state costs no commit of its own; at,
// when the hub received the line, is the stage's time.
func (s *Service) JobProgress(ctx context.Context, tx store.Tx, jobID, msg string, at time.Time) func() {
	var state deskrun.RunState
	switch msg {
	case "state:logging-on":
		state = deskrun.RunLoggingOn
	case "state:running":
		state = deskrun.RunRunning
	default:
		return nil
	}
	r, err := s.runForJob(ctx, tx, jobID)
	if err != nil {
		return nil
	}
	r.State, r.UpdatedAt = state, at
	if state == deskrun.RunLoggingOn {
		r.LogonAt = at
	} else {
		r.StartedAt = at
	}
	if _, err := tx.UpdateRun(ctx, r); err != nil {
		s.Log.Error("run progress", "run_id", r.ID, "err", err)
		return nil
	}
	return func() { s.wakeRun(r.ID) }
}

// JobLog stores a chunk of a run's output, up to the policy's limit.
func (s *Service) JobLog(ctx context.Context, c *wire.LogChunk) {
	s.sched.mu.Lock()
	runID, ok := s.sched.jobRuns[c.ID]
	if !ok {
		s.sched.mu.Unlock()
		return // not a run's job
	}
	used := s.sched.logBytes[runID]
	s.sched.logBytes[runID] = used + int64(len(c.Data))
	s.sched.mu.Unlock()
	data := c.Data
	if used >= s.Runs.MaxLogBytes {
		return
	}
	if used+int64(len(data)) > s.Runs.MaxLogBytes {
		data = append(data[:s.Runs.MaxLogBytes-used:s.Runs.MaxLogBytes-used], fmt.Sprintf("\n[deskrun: output over %d bytes; the rest was not stored]\n", s.Runs.MaxLogBytes)...)
	}
	if err := s.Store.AppendRunLog(ctx, runID, []deskrun.LogChunk{{Seq: c.Seq, Stream: c.Stream, Data: data, At: s.now()}}); err != nil {
		s.Log.Error("run log", "run_id", runID, "err", err)
		return
	}
	s.wakeRun(runID)
}

// JobFinished ends the run a desktop job carried, and applies an identity
// failure to the connection (the breaker). It writes through tx, the hub's
// transaction that records the job's end, so the job and its run end in
// one commit; what follows the commit (waking waiters, the breaker, a
// placement pass for the freed slot) is in the func it returns.
func (s *Service) JobFinished(ctx context.Context, tx store.Tx, jobID string, state deskrun.JobState, output []byte, jobErr *deskrun.Error) func() {
	r, err := s.runForJob(ctx, tx, jobID)
	if err != nil {
		return nil // not a run's job
	}
	now := s.now()
	r.FinishedAt, r.UpdatedAt, r.Error = now, now, jobErr
	var out wire.DesktopOutput
	if len(output) > 0 && json.Unmarshal(output, &out) == nil {
		if len(out.Outputs) > 0 {
			r.Outputs, _ = json.Marshal(out.Outputs)
		}
		code := out.ExitCode
		r.ExitCode = &code
		if len(out.Timings) > 0 {
			r.Timings, _ = json.Marshal(out.Timings)
		}
		if len(out.Screenshot) > 0 {
			if err := tx.SaveRunScreenshot(ctx, r.ID, out.Screenshot); err != nil {
				s.Log.Error("save screenshot", "run_id", r.ID, "err", err)
			}
		}
	}
	switch {
	case state == deskrun.JobSucceeded:
		r.State = deskrun.RunSucceeded
	case jobErr != nil && jobErr.Code == deskrun.CodeJobCancelled:
		r.State = deskrun.RunCancelled
	case jobErr != nil && jobErr.Code == deskrun.CodeDesktopFlowTimeout:
		r.State = deskrun.RunTimedOut
	default:
		r.State = deskrun.RunFailed
	}
	if _, err := tx.UpdateRun(ctx, r); err != nil {
		s.Log.Error("finish run", "run_id", r.ID, "err", err)
	}
	return func() {
		s.sched.mu.Lock()
		delete(s.sched.jobRuns, jobID)
		delete(s.sched.logBytes, r.ID)
		s.sched.mu.Unlock()
		s.runEnded(r.ID)
		if jobErr != nil && (jobErr.Code == deskrun.CodeWindowsIdentityIncorrect || jobErr.Code == deskrun.CodeSealedCredentialInvalid) {
			s.connectionFailed(ctx, r, jobErr)
		}
		s.Kick()
	}
}

// finishRunOfJob is JobFinished for a job that ended while no one
// listened (reconcile): its own transaction.
func (s *Service) finishRunOfJob(ctx context.Context, j *deskrun.Job) error {
	var done func()
	if err := s.Store.InTx(ctx, func(tx store.Tx) error {
		done = s.JobFinished(ctx, tx, j.ID, j.State, j.Result, j.Error)
		return nil
	}); err != nil {
		return err
	}
	if done != nil {
		done()
	}
	return nil
}

// connectionFailed applies a run's identity failure to its connection.
func (s *Service) connectionFailed(ctx context.Context, r *deskrun.Run, e *deskrun.Error) {
	unlock := s.connLocks.lock(r.ConnectionID)
	defer unlock()
	c, err := s.Store.GetConnection(ctx, r.ConnectionID)
	if err != nil {
		return
	}
	m, err := s.Store.GetMachine(ctx, r.MachineID)
	if err != nil {
		return
	}
	prev := c.State
	s.applyFailure(c, e)
	if err := s.Store.SetConnectionHealth(ctx, c); err != nil {
		s.Log.Error("connection health", "connection", c.Name, "err", err)
		return
	}
	s.audit(ctx, deskrun.AuditEvent{Actor: "agent:" + m.Name, Action: deskrun.AuditLogonAttempt, ConnectionID: c.ID, ConnectionName: c.Name,
		MachineID: m.ID, Result: "failed", Reason: reasonOf(e), Detail: "run " + r.ID})
	if c.State == deskrun.ConnectionBroken && prev != deskrun.ConnectionBroken {
		s.audit(ctx, deskrun.AuditEvent{Actor: "server", Action: deskrun.AuditConnectionBroken, ConnectionID: c.ID, ConnectionName: c.Name,
			MachineID: m.ID, Result: "broken", Reason: c.Reason, Detail: "run " + r.ID})
	}
	s.notifyState(c, m, prev)
}

// Run returns a run; with wait > 0 it waits that long for it to end. It
// is woken by the run's end only (runEnded), not by each of its changes:
// a waiter reads the run twice, not once per stage.
func (s *Service) Run(ctx context.Context, id string, wait time.Duration) (*deskrun.Run, error) {
	deadline := time.Now().Add(wait)
	for {
		ch := s.runEndWaiter(id)
		r, err := s.Store.GetRun(ctx, id)
		if err != nil || r.State.Terminal() || wait <= 0 {
			s.dropRunEndWaiter(id, ch)
			return r, err
		}
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-ch:
			t.Stop()
		case <-t.C:
			s.dropRunEndWaiter(id, ch)
			return s.Store.GetRun(ctx, id)
		case <-ctx.Done():
			t.Stop()
			s.dropRunEndWaiter(id, ch)
			return s.Store.GetRun(context.WithoutCancel(ctx), id)
		}
	}
}

// RunChanged returns a channel closed at the run's next change (state or
// output), for followers of its log.
func (s *Service) RunChanged(id string) (<-chan struct{}, func()) {
	ch := s.runWaiter(id)
	return ch, func() { s.dropRunWaiter(id, ch) }
}

func (s *Service) runWaiter(id string) chan struct{} {
	return s.addWaiter(&s.sched.waiters, id)
}

func (s *Service) dropRunWaiter(id string, ch chan struct{}) {
	s.dropWaiter(s.sched.waiters, id, ch)
}

// runEndWaiter returns a channel closed when the run ends (runEnded).
func (s *Service) runEndWaiter(id string) chan struct{} {
	return s.addWaiter(&s.sched.enders, id)
}

func (s *Service) dropRunEndWaiter(id string, ch chan struct{}) {
	s.dropWaiter(s.sched.enders, id, ch)
}

func (s *Service) addWaiter(m *map[string][]chan struct{}, id string) chan struct{} {
	ch := make(chan struct{})
	s.sched.mu.Lock()
	if *m == nil {
		*m = map[string][]chan struct{}{}
	}
	(*m)[id] = append((*m)[id], ch)
	s.sched.mu.Unlock()
	return ch
}

func (s *Service) dropWaiter(m map[string][]chan struct{}, id string, ch chan struct{}) {
	s.sched.mu.Lock()
	defer s.sched.mu.Unlock()
	ws := m[id]
	for i, w := range ws {
		if w == ch {
			m[id] = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(m[id]) == 0 {
		delete(m, id)
	}
}

// runEnded wakes everyone waiting on the run: for its next change, and for
// its end. Every write that ends a run (failRun, JobFinished, CancelRun,
// and a flow run's executor as it returns) calls it instead of wakeRun.
func (s *Service) runEnded(id string) {
	s.sched.mu.Lock()
	ws := s.sched.enders[id]
	delete(s.sched.enders, id)
	s.sched.mu.Unlock()
	for _, ch := range ws {
		close(ch)
	}
	s.wakeRun(id)
}

func (s *Service) wakeRun(id string) {
	s.sched.mu.Lock()
	ws := s.sched.waiters[id]
	delete(s.sched.waiters, id)
	s.sched.mu.Unlock()
	for _, ch := range ws {
		close(ch)
	}
}

// ListRuns lists runs.
func (s *Service) ListRuns(ctx context.Context, f store.RunFilter) ([]*deskrun.Run, error) {
	return s.Store.ListRuns(ctx, f)
}

// CountRuns counts runs (the overview's queue depth).
func (s *Service) CountRuns(ctx context.Context, f store.RunFilter) (int, error) {
	return s.Store.CountRuns(ctx, f)
}

// RunLog reads a run's output after seq.
func (s *Service) RunLog(ctx context.Context, id string, after int64, limit int) ([]deskrun.LogChunk, error) {
	return s.Store.ReadRunLog(ctx, id, after, limit)
}

// CancelRun cancels a run: at once when queued, through its agent when
// placed (the flow's process tree is killed).
func (s *Service) CancelRun(ctx context.Context, id string) (*deskrun.Run, error) {
	r, err := s.Store.GetRun(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.State.Terminal() {
		return r, nil
	}
	if r.State == deskrun.RunQueued {
		now := s.now()
		r.State, r.FinishedAt, r.UpdatedAt = deskrun.RunCancelled, now, now
		r.Error = &deskrun.Error{Code: deskrun.CodeJobCancelled, Message: "the run was cancelled before it was placed"}
		if _, err := s.Store.UpdateRun(ctx, r); err != nil {
			return nil, err
		}
		s.runEnded(r.ID)
		return r, nil
	}
	if err := s.Hub.Cancel(ctx, r.JobID); err != nil {
		var de *deskrun.Error
		if errors.As(err, &de) && de.Code == deskrun.CodeMachineOffline {
			return r, err
		}
		return nil, err
	}
	return s.Store.GetRun(ctx, id)
}

// RunScreenshot returns a run's screenshot PNG.
func (s *Service) RunScreenshot(ctx context.Context, id string) ([]byte, error) {
	return s.Store.GetRunScreenshot(ctx, id)
}

// PackageForMachine returns a package an agent may download: only one that
// a run placed on that machine uses.
func (s *Service) PackageForMachine(ctx context.Context, machineID, digest string) ([]byte, error) {
	runs, err := s.Store.ListRuns(ctx, store.RunFilter{MachineID: machineID,
		States: []deskrun.RunState{deskrun.RunAssigned, deskrun.RunLoggingOn, deskrun.RunRunning}, Limit: 100000})
	if err != nil {
		return nil, err
	}
	for _, r := range runs {
		if r.Digest == digest {
			return s.Store.GetPackage(ctx, digest)
		}
	}
	return nil, &deskrun.Error{Code: deskrun.CodeForbidden, Message: "no run on this machine uses this package"}
}
