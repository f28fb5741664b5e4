// Package dispatch pushes work to connected agents. The Hub owns the live
// agent connections (one per machine), runs the agent protocol on each,
// and moves jobs through their states: a job is pushed the moment it is
// created if its agent is connected, or when the agent connects. Nothing
// polls the database for work; timers fire only for leases.
//
// Leases: while an agent is connected its heartbeats keep its jobs alive.
// When its connection ends (or the server starts without it), the Hub arms
// one timer per machine; if the agent is not back before the lease runs
// out, its pushed and running jobs fail with AgentLost. A job is never
// silently re-run once an agent has acknowledged it, because automation
// has side effects.
package dispatch

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/store"
	"github.com/deskrun/deskrun/internal/wire"
)

// Config tunes a Hub.
type Config struct {
	// HeartbeatInterval is how often agents send a heartbeat. An agent
	// silent for HeartbeatMisses intervals is disconnected.
	HeartbeatInterval time.Duration
	HeartbeatMisses   int
	// Lease is how long a disconnected agent's jobs wait for it to come
	// back before they fail with AgentLost.
	Lease time.Duration
	// HelloTimeout bounds the handshake.
	HelloTimeout  time.Duration
	ServerVersion string
}

// DefaultConfig returns production defaults.
func DefaultConfig() Config {
	return Config{HeartbeatInterval: 10 * time.Second, HeartbeatMisses: 3, Lease: 60 * time.Second, HelloTimeout: 10 * time.Second}
}

// Listener hears what happens to jobs and agents, for the layers built
// on jobs (desktop-flow runs). Its methods are called on the hub's
// goroutines and must not block for long.
type Listener interface {
	AgentConnected(ctx context.Context, machineID string)
	// JobProgress is called inside the transaction that records a job's
	// progress line (received at at): what it writes through tx commits
	// with the line, in one commit. It must use only tx for the store, and
	// returns what to do once that commit is done (or nil), such as
	// waking those who wait for the change.
	JobProgress(ctx context.Context, tx store.Tx, jobID, message string, at time.Time) (committed func())
	JobLog(ctx context.Context, chunk *wire.LogChunk)
	// JobFinished is called inside the transaction that ends a job, once
	// (only by the call that ended it): as with JobProgress, what it
	// writes through tx commits with the job's end, and committed (may be
	// nil) runs after the commit.
	JobFinished(ctx context.Context, tx store.Tx, jobID string, state deskrun.JobState, output []byte, jobErr *deskrun.Error) (committed func())
}

// Hub runs agent connections and pushes jobs to them.
type Hub struct {
	cfg     Config
	store   store.Store
	log     *slog.Logger
	now     func() time.Time
	metrics *Metrics
	// Listener, when set (before Start), hears job and agent events.
	Listener Listener

	mu       sync.Mutex
	machines map[string]*machineState
	waiters  map[string][]chan struct{} // job id → closed when the job ends
	presence chan struct{}              // closed (and replaced) when a machine goes online or offline
	// readBufs hold *bytes.Buffer for frames being decoded (json.Unmarshal
	// copies what it keeps), so a heartbeat allocates no read buffer.
	readBufs sync.Pool
	stopped  bool
	conns    sync.WaitGroup // connections' read loops, through their disconnect
	ctx      context.Context
	cancel   context.CancelFunc
}

// machineState serialises what happens to one machine: its connection
// registering and jobs being created for it, so no job is missed between
// "not connected" and "connected".
type machineState struct {
	mu    sync.Mutex
	conn  *agentConn
	lease *time.Timer
}

// New makes a Hub. now may be nil (time.Now).
func New(cfg Config, st store.Store, log *slog.Logger, now func() time.Time, m *Metrics) *Hub {
	if now == nil {
		now = time.Now
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Hub{cfg: cfg, store: st, log: log, now: now, metrics: m,
		machines: map[string]*machineState{}, waiters: map[string][]chan struct{}{}}
}

// Start marks every machine offline (no agent is connected to a server
// that just started) and arms the lease of machines that still have jobs
// in flight, so their agents have one lease to come back.
func (h *Hub) Start(ctx context.Context) error {
	h.ctx, h.cancel = context.WithCancel(context.WithoutCancel(ctx))
	now := h.now()
	if err := h.store.MarkAllMachinesOffline(ctx, now, "server restarted"); err != nil {
		return fmt.Errorf("mark machines offline: %w", err)
	}
	active, err := h.store.ListJobs(ctx, store.JobFilter{States: []deskrun.JobState{deskrun.JobPushed, deskrun.JobRunning}, Limit: 1 << 20})
	if err != nil {
		return fmt.Errorf("list active jobs: %w", err)
	}
	seen := map[string]bool{}
	for _, j := range active {
		if !seen[j.MachineID] {
			seen[j.MachineID] = true
			h.armLease(h.machine(j.MachineID), j.MachineID)
		}
	}
	return nil
}

// PresenceChanged returns a channel that is closed the next time a
// machine goes online or offline (after the store has the change), for
// live views such as the console's machine list: they wait on it instead
// of polling.
func (h *Hub) PresenceChanged() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.presence == nil {
		h.presence = make(chan struct{})
	}
	return h.presence
}

func (h *Hub) presenceChanged() {
	h.mu.Lock()
	ch := h.presence
	h.presence = nil
	h.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}

// Stop closes every agent connection and waits until each has recorded
// its end, so the store may be closed after it. It is safe to call more
// than once.
func (h *Hub) Stop() {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		return
	}
	h.stopped = true
	ms := make([]*machineState, 0, len(h.machines))
	for _, m := range h.machines {
		ms = append(ms, m)
	}
	h.mu.Unlock()
	for _, m := range ms {
		m.mu.Lock()
		if m.lease != nil {
			m.lease.Stop()
		}
		c := m.conn
		m.mu.Unlock()
		if c != nil {
			c.close(websocket.StatusGoingAway, "server stopping")
		}
	}
	if h.cancel != nil {
		h.cancel()
	}
	h.conns.Wait()
}

func (h *Hub) machine(id string) *machineState {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := h.machines[id]
	if m == nil {
		m = &machineState{}
		h.machines[id] = m
	}
	return m
}

// Online reports whether machine id has a live agent connection here.
func (h *Hub) Online(id string) bool {
	m := h.machine(id)
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.conn != nil
}

// Submit stores a new job for its machine and pushes it at once when the
// machine's agent is connected. The job is committed before it is sent.
func (h *Hub) Submit(ctx context.Context, j *deskrun.Job) error {
	_, err := h.SubmitWith(ctx, j, func(ctx context.Context, j *deskrun.Job) (bool, error) {
		return true, h.store.CreateJob(ctx, j)
	})
	return err
}

// SubmitWith is Submit with the job stored by create, which may write more
// in the same commit (a run's assignment, through store.AssignRun) or
// decline to store the job (false: nothing is pushed). create is called
// with the job's id, times and state set, under the machine's lock: the
// state it stores (pushed when the agent is connected, queued otherwise)
// cannot be overtaken by the agent connecting or leaving, because
// register reads the machine's queued jobs under that lock. The job is
// committed before it is sent.
func (h *Hub) SubmitWith(ctx context.Context, j *deskrun.Job, create func(context.Context, *deskrun.Job) (bool, error)) (bool, error) {
	stored, err := h.SubmitAll(ctx, j.MachineID, []*deskrun.Job{j}, func(ctx context.Context, js []*deskrun.Job) ([]bool, error) {
		ok, err := create(ctx, js[0])
		return []bool{ok}, err
	})
	if err != nil {
		return false, err
	}
	return stored[0], nil
}

// SubmitAll is SubmitWith for several jobs of one machine stored by one
// create (one commit: the scheduler assigns a pass's runs of a machine
// together). create says which jobs it stored; those are pushed, in
// order.
func (h *Hub) SubmitAll(ctx context.Context, machineID string, js []*deskrun.Job, create func(context.Context, []*deskrun.Job) ([]bool, error)) ([]bool, error) {
	m := h.machine(machineID)
	now := h.now()
	m.mu.Lock()
	c := m.conn
	for _, j := range js {
		j.CreatedAt, j.UpdatedAt = now, now
		if j.ID == "" {
			j.ID = deskrun.NewID("j", now)
		}
		j.State = deskrun.JobQueued
		if c != nil {
			j.State = deskrun.JobPushed
		}
	}
	stored, err := create(ctx, js)
	m.mu.Unlock()
	if err != nil {
		return nil, err
	}
	for i, j := range js {
		if !stored[i] {
			continue
		}
		h.metrics.jobsCreated.Inc()
		if c != nil {
			c.send(&wire.Frame{Type: wire.FrameJob, Job: &wire.JobPush{ID: j.ID, Kind: j.Kind, Payload: j.Payload}})
		}
	}
	return stored, nil
}

// Cancel asks the agent to cancel a job; a job not yet pushed is cancelled
// at once.
func (h *Hub) Cancel(ctx context.Context, id string) error {
	j, err := h.store.GetJob(ctx, id)
	if err != nil {
		return err
	}
	if j.State.Terminal() {
		return nil
	}
	if j.State == deskrun.JobQueued {
		_, err := h.finish(ctx, id, false, nil, &deskrun.Error{Code: deskrun.CodeJobCancelled, Message: "the job was cancelled before it reached its machine"})
		return err
	}
	m := h.machine(j.MachineID)
	m.mu.Lock()
	c := m.conn
	m.mu.Unlock()
	if c == nil {
		return &deskrun.Error{Code: deskrun.CodeMachineOffline, Message: "the job's machine is offline; it will be cancelled when its lease runs out"}
	}
	c.send(&wire.Frame{Type: wire.FrameCancel, ID: id})
	return nil
}

// Wait returns the job once it is terminal, or as it is when ctx ends.
func (h *Hub) Wait(ctx context.Context, id string) (*deskrun.Job, error) {
	ch := make(chan struct{})
	h.mu.Lock()
	h.waiters[id] = append(h.waiters[id], ch)
	h.mu.Unlock()
	defer h.dropWaiter(id, ch)
	j, err := h.store.GetJob(ctx, id)
	if err != nil || j.State.Terminal() {
		return j, err
	}
	select {
	case <-ch:
	case <-ctx.Done():
	}
	return h.store.GetJob(context.WithoutCancel(ctx), id)
}

func (h *Hub) dropWaiter(id string, ch chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ws := h.waiters[id]
	for i, w := range ws {
		if w == ch {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(h.waiters, id)
	} else {
		h.waiters[id] = ws
	}
}

func (h *Hub) notify(id string) {
	h.mu.Lock()
	ws := h.waiters[id]
	delete(h.waiters, id)
	h.mu.Unlock()
	for _, ch := range ws {
		close(ch)
	}
}

// finish records a job's end exactly once, with what the listener makes
// of it (the end of the run it carried) in the same commit, and wakes its
// waiters.
func (h *Hub) finish(ctx context.Context, id string, ok bool, output []byte, jobErr *deskrun.Error) (bool, error) {
	state := deskrun.JobSucceeded
	if !ok {
		state = deskrun.JobFailed
		if jobErr != nil && jobErr.Code == deskrun.CodeJobCancelled {
			state = deskrun.JobCancelled
		}
	}
	var (
		applied   bool
		committed func()
	)
	err := h.store.InTx(ctx, func(tx store.Tx) error {
		var err error
		if applied, err = tx.FinishJob(ctx, id, state, output, jobErr, h.now()); err != nil || !applied {
			return err
		}
		if h.Listener != nil {
			committed = h.Listener.JobFinished(ctx, tx, id, state, output, jobErr)
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	if applied {
		h.metrics.jobsFinished.WithLabelValues(string(state)).Inc()
		if committed != nil {
			committed()
		}
		h.notify(id)
	}
	return applied, nil
}

// armLease starts (or restarts) the timer that fails a machine's in-flight
// jobs if its agent does not come back in time.
func (h *Hub) armLease(m *machineState, machineID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lease != nil {
		m.lease.Stop()
	}
	m.lease = time.AfterFunc(h.cfg.Lease, func() { h.leaseExpired(machineID) })
}

func (h *Hub) leaseExpired(machineID string) {
	m := h.machine(machineID)
	m.mu.Lock()
	back := m.conn != nil
	m.lease = nil
	m.mu.Unlock()
	if back || h.ctx.Err() != nil {
		return
	}
	ctx := h.ctx
	jobs, err := h.store.ListJobs(ctx, store.JobFilter{MachineID: machineID, States: []deskrun.JobState{deskrun.JobPushed, deskrun.JobRunning}, Limit: 1 << 20})
	if err != nil {
		h.log.Error("lease expiry: list jobs", "machine", machineID, "err", err)
		return
	}
	for _, j := range jobs {
		e := &deskrun.Error{Code: deskrun.CodeAgentLost, Retryable: false, Machine: machineID,
			Message:    fmt.Sprintf("the agent of machine %s did not come back within %s; the job's outcome is unknown and it is not re-run, because automation has side effects", machineID, h.cfg.Lease),
			Resolution: "Check the machine and its agent (`deskrun machine show " + machineID + "`), then run the job again if it is safe to."}
		if _, err := h.finish(ctx, j.ID, false, nil, e); err != nil {
			h.log.Error("lease expiry: fail job", "job_id", j.ID, "err", err)
		}
	}
}

// Serve runs the agent protocol on one accepted WebSocket. It does the
// handshake on the caller's goroutine, then returns and leaves the
// connection to a read loop of its own, bound to the hub's life: the HTTP
// handler (and its goroutine, whose stack grew during TLS and the
// handshake) is gone for the connection's idle life, which keeps an idle
// agent cheap.
func (h *Hub) Serve(ctx context.Context, ws *websocket.Conn, remote string) {
	ws.SetReadLimit(4 << 20)
	c := &agentConn{ws: ws, hub: h}
	mach, hello, err := h.handshake(ctx, c)
	if err != nil {
		var de *deskrun.Error
		if errors.As(err, &de) {
			c.write(ctx, &wire.Frame{Type: wire.FrameError, Error: de})
			h.log.Warn("agent refused", "remote", remote, "code", de.Code, "reason", de.Message)
		} else {
			h.log.Info("agent handshake ended", "remote", remote, "err", err)
		}
		ws.Close(websocket.StatusPolicyViolation, "refused")
		return
	}
	c.machineID = mach.ID
	if reason := h.register(h.ctx, c, mach, hello); reason != "" {
		h.disconnect(c, reason)
		return
	}
	h.mu.Lock()
	stopped := h.stopped
	if !stopped {
		h.conns.Add(1) // under h.mu: never after Stop began to wait
	}
	h.mu.Unlock()
	if stopped {
		h.disconnect(c, "server stopping")
		return
	}
	go func() {
		defer h.conns.Done()
		h.disconnect(c, h.readLoop(h.ctx, c))
	}()
}

func (h *Hub) handshake(ctx context.Context, c *agentConn) (*deskrun.Machine, *wire.Hello, error) {
	hctx, cancel := context.WithTimeout(ctx, h.cfg.HelloTimeout)
	defer cancel()
	nonce := make([]byte, 32)
	_, _ = rand.Read(nonce)
	if err := c.write(hctx, &wire.Frame{Type: wire.FrameChallenge, Challenge: &wire.Challenge{Nonce: nonce}}); err != nil {
		return nil, nil, err
	}
	f, err := c.read(hctx)
	if err != nil {
		return nil, nil, err
	}
	authFail := &deskrun.Error{Code: deskrun.CodeAgentAuthFailed, Message: "the agent could not prove it is the machine it claims to be",
		Resolution: "Re-enroll the agent: `deskrun agent enroll --token T` with a new enrollment token."}
	if f.Type != wire.FrameHello || f.Hello == nil {
		return nil, nil, authFail
	}
	hello := f.Hello
	mach, err := h.store.GetMachine(ctx, hello.MachineID)
	if err != nil {
		if deskrun.IsCode(err, deskrun.CodeNotFound) {
			return nil, nil, authFail
		}
		return nil, nil, err
	}
	if len(mach.SigningKey) != ed25519.PublicKeySize || !ed25519.Verify(mach.SigningKey, wire.AuthMessage(mach.ID, nonce), hello.Signature) {
		return nil, nil, authFail
	}
	if hello.ProtocolVersion < wire.MinProtocolVersion {
		return nil, nil, &deskrun.Error{Code: deskrun.CodeAgentProtocolTooOld, Machine: mach.Name,
			Message:    fmt.Sprintf("the agent speaks protocol %d; this server needs at least %d", hello.ProtocolVersion, wire.MinProtocolVersion),
			Resolution: fmt.Sprintf("Upgrade deskrun on machine %s to the server's version (%s) and restart the agent.", mach.Name, h.cfg.ServerVersion)}
	}
	return mach, hello, nil
}

// register records the connection, welcomes the agent and reconciles the
// jobs it holds; it returns why it failed, or "".
func (h *Hub) register(ctx context.Context, c *agentConn, mach *deskrun.Machine, hello *wire.Hello) string {
	now := h.now()
	info := hello.Info
	mach.OS, mach.Arch, mach.Kernel, mach.AgentVersion = info.OS, info.Arch, info.Kernel, info.AgentVersion
	mach.ProtocolVersion = hello.ProtocolVersion
	mach.JoinState, mach.Domain = deskrun.JoinState(info.JoinState), info.Domain
	if info.Slots > 0 {
		mach.Slots = info.Slots
	}
	if err := h.store.UpdateMachineInfo(ctx, mach); err != nil {
		return "store machine info: " + err.Error()
	}

	m := h.machine(mach.ID)
	m.mu.Lock()
	old := m.conn
	m.conn = c
	if m.lease != nil {
		m.lease.Stop()
		m.lease = nil
	}
	err := h.store.SetMachinePresence(ctx, mach.ID, deskrun.MachineOnline, now, "")
	var jobs []*deskrun.Job
	if err == nil {
		jobs, err = h.store.ListJobs(ctx, store.JobFilter{MachineID: mach.ID, States: []deskrun.JobState{deskrun.JobQueued, deskrun.JobPushed, deskrun.JobRunning}, Limit: 1 << 20})
	}
	m.mu.Unlock()
	var active, queued []*deskrun.Job
	for _, j := range jobs {
		if j.State == deskrun.JobQueued {
			queued = append(queued, j)
		} else {
			active = append(active, j)
		}
	}
	h.presenceChanged()
	if old != nil {
		old.close(websocket.StatusPolicyViolation, "replaced by a newer connection of the same machine")
	}
	if err != nil {
		return "load jobs: " + err.Error()
	}
	h.metrics.agentsConnected.Inc()
	c.counted = true
	h.log.Info("agent connected", "machine", mach.Name, "machine_id", mach.ID, "protocol", hello.ProtocolVersion, "held_jobs", len(hello.Held))

	c.watchdog = time.AfterFunc(h.cfg.HeartbeatInterval*time.Duration(h.cfg.HeartbeatMisses), func() {
		c.close(websocket.StatusPolicyViolation, "heartbeat timeout")
	})
	if err := c.write(ctx, &wire.Frame{Type: wire.FrameWelcome, Welcome: &wire.Welcome{
		MachineID: mach.ID, HeartbeatInterval: h.cfg.HeartbeatInterval.Milliseconds(), ServerVersion: h.cfg.ServerVersion}}); err != nil {
		return "write welcome: " + err.Error()
	}
	h.reconcile(ctx, c, hello.Held, active, queued)
	if h.Listener != nil {
		h.Listener.AgentConnected(ctx, mach.ID)
	}
	return ""
}

// readLoop reads frames until the connection ends and returns why.
//
// Its reads are not cancellable: coder/websocket registers a cancellable
// read's context with context.AfterFunc on every read, which costs each
// heartbeat allocations and a turn on the lock of the hub's context, which
// all connections share. The end of ctx closes the connection instead,
// once per connection.
func (h *Hub) readLoop(ctx context.Context, c *agentConn) string {
	stop := context.AfterFunc(ctx, func() { c.ws.CloseNow() })
	defer stop()
	rctx := context.WithoutCancel(ctx)
	for {
		f, err := c.read(rctx)
		if err != nil {
			if r := c.closeReason(); r != "" {
				return r
			}
			return "connection lost: " + shortErr(err)
		}
		c.watchdog.Reset(h.cfg.HeartbeatInterval * time.Duration(h.cfg.HeartbeatMisses))
		h.handle(ctx, c, f)
	}
}

// reconcile settles what the agent holds against what the store says.
func (h *Hub) reconcile(ctx context.Context, c *agentConn, held []wire.HeldJob, active, queued []*deskrun.Job) {
	holds := map[string]bool{}
	for _, hj := range held {
		holds[hj.ID] = true
		if hj.Result != nil {
			h.recordResult(ctx, c, hj.Result)
			continue
		}
		if _, err := h.store.UpdateJobState(ctx, hj.ID, deskrun.JobRunning, time.Time{}, h.now()); err != nil {
			h.log.Error("reconcile: mark running", "job_id", hj.ID, "err", err)
		}
	}
	for _, j := range active {
		if holds[j.ID] {
			continue
		}
		if j.State == deskrun.JobPushed {
			// Sent but never acknowledged: the agent never started it, so
			// sending it again is safe.
			c.send(&wire.Frame{Type: wire.FrameJob, Job: &wire.JobPush{ID: j.ID, Kind: j.Kind, Payload: j.Payload}})
			continue
		}
		e := &deskrun.Error{Code: deskrun.CodeAgentLost, Machine: c.machineID,
			Message:    "the agent restarted while running the job and lost it; the job's processes ended with the agent",
			Resolution: "Find out why the agent restarted (its logs), then run the job again if it is safe to."}
		if _, err := h.finish(ctx, j.ID, false, nil, e); err != nil {
			h.log.Error("reconcile: fail lost job", "job_id", j.ID, "err", err)
		}
	}
	for i := len(queued) - 1; i >= 0; i-- { // ListJobs is newest first; push oldest first
		j := queued[i]
		if ok, err := h.store.UpdateJobState(ctx, j.ID, deskrun.JobPushed, time.Time{}, h.now()); err != nil || !ok {
			continue
		}
		c.send(&wire.Frame{Type: wire.FrameJob, Job: &wire.JobPush{ID: j.ID, Kind: j.Kind, Payload: j.Payload}})
	}
}

func (h *Hub) handle(ctx context.Context, c *agentConn, f *wire.Frame) {
	switch f.Type {
	case wire.FrameHeartbeat:
	case wire.FrameAck:
		// The ack is written a moment later, unless the result comes first
		// (a short job): then the result's one commit records both. This is
		// safe because the agent records a job before acking it, so a job
		// it accepted is reported (held, or lost) on its next hello even if
		// the ack was never written.
		id := f.ID
		c.mu.Lock()
		if c.acks == nil {
			c.acks = map[string]*time.Timer{}
		}
		c.acks[id] = time.AfterFunc(ackDelay, func() {
			c.mu.Lock()
			_, pending := c.acks[id]
			delete(c.acks, id)
			c.mu.Unlock()
			if !pending {
				return
			}
			if _, err := h.store.UpdateJobState(ctx, id, deskrun.JobRunning, time.Time{}, h.now()); err != nil && ctx.Err() == nil {
				h.log.Error("ack", "job_id", id, "err", err)
			}
		})
		c.mu.Unlock()
	case wire.FrameProgress:
		if f.Progress != nil {
			h.recordProgress(ctx, c, f.Progress)
		}
	case wire.FrameLog:
		if f.Log != nil && h.Listener != nil {
			h.Listener.JobLog(ctx, f.Log)
		}
	case wire.FrameResult:
		if f.Result != nil {
			h.recordResult(ctx, c, f.Result)
		}
	case wire.FrameDoctor:
		if f.Doctor != nil {
			r := boundDoctor(f.Doctor, h.now())
			if err := h.store.SetMachineDoctor(ctx, c.machineID, r); err != nil && ctx.Err() == nil {
				h.log.Error("doctor report", "machine_id", c.machineID, "err", err)
			}
		}
	default:
		h.log.Warn("unknown frame from agent", "machine_id", c.machineID, "type", f.Type)
	}
}

// Bounds of a stored doctor report: the agent's report has a few dozen
// short checks; a bigger one is cut, not refused.
const (
	maxDoctorChecks = 200
	maxDoctorText   = 2000
)

// boundDoctor is the report as the server keeps it: at most
// maxDoctorChecks checks of bounded text, unknown statuses as warnings,
// and dated when the server received it (the agent's clock may be off,
// which the report itself may say).
func boundDoctor(in *deskrun.DoctorReport, now time.Time) *deskrun.DoctorReport {
	cut := func(s string) string {
		if len(s) <= maxDoctorText {
			return s
		}
		return strings.ToValidUTF8(s[:maxDoctorText], "") + "…"
	}
	out := &deskrun.DoctorReport{At: now.UTC(), Checks: make([]deskrun.DoctorCheck, 0, min(len(in.Checks), maxDoctorChecks))}
	for i, c := range in.Checks {
		if i == maxDoctorChecks {
			break
		}
		switch c.Status {
		case deskrun.DoctorPass, deskrun.DoctorWarn, deskrun.DoctorFail, deskrun.DoctorSkip:
		default:
			c.Status = deskrun.DoctorWarn
		}
		out.Checks = append(out.Checks, deskrun.DoctorCheck{Name: cut(c.Name), Status: c.Status, Detail: cut(c.Detail), Fix: cut(c.Fix)})
	}
	return out
}

// recordProgress writes a progress line, what the listener makes of it
// (a run's next state) and, for the first line of a job, its ack, in one
// commit.
//
// Why the line may carry the ack: the ack is written so that a server
// that restarts, or an agent that reconnects, knows the agent took the
// job, and does not push it again (a pushed job the agent does not hold
// is re-pushed: it never started). The agent sends progress only from a
// job it has recorded in its state directory and acknowledged (accept,
// then execute), so a progress line proves at least what the ack does,
// and SetJobProgress moves a pushed job to running. The pending ack's
// timer is stopped only after that commit, so there is no moment when
// neither is on its way to the store; if the commit fails, the timer
// writes the ack as it would have. Until either commits, the job is
// pushed in the store, exactly as during the ack's delay (ackDelay): if
// the server restarts then, the agent lists the job as held in its next
// hello and reconcile marks it running, never re-pushes it. So the line
// only ever writes the ack sooner than the timer would, never later.
func (h *Hub) recordProgress(ctx context.Context, c *agentConn, p *wire.JobProgress) {
	at := h.now()
	var committed func()
	err := h.store.InTx(ctx, func(tx store.Tx) error {
		if err := tx.SetJobProgress(ctx, p.ID, p.Message, at); err != nil {
			return err
		}
		if h.Listener != nil {
			committed = h.Listener.JobProgress(ctx, tx, p.ID, p.Message, at)
		}
		return nil
	})
	if err != nil {
		if ctx.Err() == nil {
			h.log.Error("progress", "job_id", p.ID, "err", err)
		}
		return
	}
	c.mu.Lock()
	if t, ok := c.acks[p.ID]; ok {
		t.Stop()
		delete(c.acks, p.ID)
	}
	c.mu.Unlock()
	if committed != nil {
		committed()
	}
}

func (h *Hub) recordResult(ctx context.Context, c *agentConn, r *wire.JobResult) {
	c.mu.Lock()
	if t, ok := c.acks[r.ID]; ok {
		t.Stop()
		delete(c.acks, r.ID)
	}
	c.mu.Unlock()
	if r.Error != nil && r.Error.Machine == "" {
		r.Error.Machine = c.machineID
	}
	if _, err := h.finish(ctx, r.ID, r.OK, r.Output, r.Error); err != nil {
		if !deskrun.IsCode(err, deskrun.CodeNotFound) {
			h.log.Error("record result", "job_id", r.ID, "err", err)
			return // no ack: the agent keeps the result and sends it again
		}
	}
	c.send(&wire.Frame{Type: wire.FrameResultAck, ID: r.ID})
}

func (h *Hub) disconnect(c *agentConn, reason string) {
	if c.watchdog != nil {
		c.watchdog.Stop()
	}
	if c.counted {
		h.metrics.agentsConnected.Dec()
	}
	var pending []string
	c.mu.Lock()
	for id, t := range c.acks {
		if t.Stop() {
			pending = append(pending, id)
		}
	}
	c.acks = nil
	c.mu.Unlock()
	for _, id := range pending {
		// Written now so the job shows running while its lease runs.
		if _, err := h.store.UpdateJobState(h.ctx, id, deskrun.JobRunning, time.Time{}, h.now()); err != nil && h.ctx.Err() == nil {
			h.log.Error("ack", "job_id", id, "err", err)
		}
	}
	m := h.machine(c.machineID)
	m.mu.Lock()
	current := m.conn == c
	if current {
		m.conn = nil
	}
	m.mu.Unlock()
	c.close(websocket.StatusNormalClosure, "")
	if !current {
		return // replaced: the new connection owns the machine's state
	}
	h.log.Info("agent disconnected", "machine_id", c.machineID, "reason", reason)
	ctx := h.ctx
	if err := h.store.SetMachinePresence(ctx, c.machineID, deskrun.MachineOffline, h.now(), reason); err != nil && ctx.Err() == nil {
		h.log.Error("mark machine offline", "machine_id", c.machineID, "err", err)
	}
	h.presenceChanged()
	if ctx.Err() == nil {
		h.armLease(m, c.machineID)
	}
}

// agentConn is one live agent connection. One goroutine reads (Serve's);
// any goroutine may write. Heartbeats are watched by a timer, not a
// goroutine, to keep idle connections cheap.
type agentConn struct {
	ws        *websocket.Conn
	hub       *Hub
	machineID string
	watchdog  *time.Timer
	counted   bool // in the agents_connected gauge

	mu       sync.Mutex
	closedBy string
	acks     map[string]*time.Timer // acks not yet written
}

// ackDelay is how long an ack waits to be written, in case the result
// makes it unnecessary.
const ackDelay = 20 * time.Millisecond

func (c *agentConn) read(ctx context.Context) (*wire.Frame, error) {
	_, r, err := c.ws.Reader(ctx)
	if err != nil {
		return nil, err
	}
	buf, _ := c.hub.readBufs.Get().(*bytes.Buffer)
	if buf == nil {
		buf = new(bytes.Buffer)
	}
	defer c.hub.putReadBuf(buf)
	if _, err := buf.ReadFrom(r); err != nil {
		return nil, err
	}
	var f wire.Frame
	if err := json.Unmarshal(buf.Bytes(), &f); err != nil {
		return nil, fmt.Errorf("malformed frame: %w", err)
	}
	return &f, nil
}

// maxPooledReadBuf is the largest read buffer kept for reuse: one large
// result should not pin megabytes in the pool.
const maxPooledReadBuf = 64 << 10

func (h *Hub) putReadBuf(b *bytes.Buffer) {
	if b.Cap() > maxPooledReadBuf {
		return
	}
	b.Reset()
	h.readBufs.Put(b)
}

// write sends one frame; coder/websocket allows concurrent writers.
func (c *agentConn) write(ctx context.Context, f *wire.Frame) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	return c.ws.Write(ctx, websocket.MessageText, b)
}

// send writes a frame with a bounded wait; a failed send closes the
// connection, and the job is re-pushed or failed on reconnect.
func (c *agentConn) send(f *wire.Frame) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.write(ctx, f); err != nil {
		c.close(websocket.StatusInternalError, "write failed: "+shortErr(err))
	}
}

func (c *agentConn) close(code websocket.StatusCode, reason string) {
	c.mu.Lock()
	if c.closedBy == "" {
		c.closedBy = reason
		if reason == "" {
			c.closedBy = "closed"
		}
	}
	c.mu.Unlock()
	go c.ws.Close(code, reason) // Close waits for the peer; never block the caller
}

func (c *agentConn) closeReason() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closedBy
}

func shortErr(err error) string {
	s := err.Error()
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}
