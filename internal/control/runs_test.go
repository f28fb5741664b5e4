package control

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/dispatch"
	"github.com/deskrun/deskrun/internal/wire"
)

// runWorld is the scheduler with its real parts: a SQLite store, the hub
// behind a WebSocket endpoint, and agents that speak the protocol from
// the test, so the test decides when a run starts, progresses and ends.
type runWorld struct {
	t     *testing.T
	s     *Service
	hub   *dispatch.Hub
	clock *clock
	url   string
}

const queueTimeout = time.Hour

func newRunWorld(t *testing.T) *runWorld {
	st := openStore(t, filepath.Join(t.TempDir(), "deskrun.db"))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := slog.New(slog.DiscardHandler)
	hub := dispatch.New(dispatch.DefaultConfig(), st, log, nil, nil)
	require.NoError(t, hub.Start(ctx))
	t.Cleanup(hub.Stop)
	c := &clock{now: time.Now().UTC()}
	s := &Service{Store: st, Hub: hub, Log: log, Now: c.Now, Runs: RunPolicy{QueueTimeout: queueTimeout, MaxLogBytes: 1 << 20}}
	hub.Listener = s
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err == nil {
			hub.Serve(r.Context(), ws, r.RemoteAddr)
		}
	}))
	t.Cleanup(srv.Close)
	_, err := st.CreateDesktopFlowVersion(ctx, &deskrun.DesktopFlow{Name: "f", Digest: "sha256:f",
		Manifest: json.RawMessage(`{"name":"f","run":"true"}`), CreatedAt: c.Now()}, []byte("archive"))
	require.NoError(t, err)
	s.StartScheduler(ctx)
	return &runWorld{t: t, s: s, hub: hub, clock: c, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
}

// fakeAgent is a machine's agent as the hub sees it: it records the jobs
// pushed to it and sends what the test tells it to.
type fakeAgent struct {
	t    *testing.T
	m    *deskrun.Machine
	ws   *websocket.Conn
	jobs chan *wire.JobPush
}

// machine enrolls a machine with slots; online connects its agent.
func (w *runWorld) machine(name string, slots int, online bool) *fakeAgent {
	t := w.t
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	m := &deskrun.Machine{ID: deskrun.NewID("m", time.Now()), Name: name, SigningKey: pub, Slots: slots, State: deskrun.MachineOffline, CreatedAt: w.clock.Now()}
	require.NoError(t, w.s.Store.CreateMachine(t.Context(), m))
	a := &fakeAgent{t: t, m: m, jobs: make(chan *wire.JobPush, 16)}
	if !online {
		return a
	}
	ctx := t.Context()
	a.ws, _, err = websocket.Dial(ctx, w.url, nil)
	require.NoError(t, err)
	t.Cleanup(func() { a.ws.CloseNow() })
	var f wire.Frame
	require.NoError(t, wsjson.Read(ctx, a.ws, &f))
	require.Equal(t, wire.FrameChallenge, f.Type)
	require.NoError(t, wsjson.Write(ctx, a.ws, &wire.Frame{Type: wire.FrameHello, Hello: &wire.Hello{MachineID: m.ID,
		Signature: ed25519.Sign(key, wire.AuthMessage(m.ID, f.Challenge.Nonce)), ProtocolVersion: wire.ProtocolVersion,
		Info: wire.MachineInfo{OS: "linux", Slots: slots}}}))
	require.NoError(t, wsjson.Read(ctx, a.ws, &f))
	require.Equal(t, wire.FrameWelcome, f.Type) // the hub has the connection: the machine is online
	go func() {
		for {
			var f wire.Frame
			if wsjson.Read(context.Background(), a.ws, &f) != nil {
				close(a.jobs)
				return
			}
			if f.Type == wire.FrameJob {
				a.jobs <- f.Job
			}
		}
	}()
	return a
}

// job waits for the next job pushed to the agent and returns it with the
// run it carries.
func (a *fakeAgent) job() (*wire.JobPush, string) {
	a.t.Helper()
	select {
	case j := <-a.jobs:
		require.NotNil(a.t, j, "the agent's connection closed")
		var p wire.DesktopPayload
		_ = json.Unmarshal(j.Payload, &p)
		return j, p.RunID
	case <-time.After(10 * time.Second):
		a.t.Fatalf("machine %s: no job pushed", a.m.Name)
		return nil, ""
	}
}

func (a *fakeAgent) send(f *wire.Frame) {
	require.NoError(a.t, wsjson.Write(a.t.Context(), a.ws, f))
}

func (a *fakeAgent) finish(j *wire.JobPush) {
	a.send(&wire.Frame{Type: wire.FrameResult, Result: &wire.JobResult{ID: j.ID, OK: true, Output: json.RawMessage(`{"exit_code":0}`)}})
}

// conn stores a healthy connection to a machine, its credential sealed
// for it (the test never opens it).
func (w *runWorld) conn(name string, a *fakeAgent, username string, mode deskrun.RunMode) {
	now := w.clock.Now()
	c := &deskrun.Connection{ID: deskrun.NewID("c", now), Name: name, Target: a.m.ID, Username: username, RunMode: mode,
		LogonType: "interactive", State: deskrun.ConnectionHealthy, CreatedAt: now, UpdatedAt: now}
	c.Credentials = []deskrun.SealedCredential{{MachineID: a.m.ID, KeyID: "k1", Ciphertext: []byte("sealed")}}
	require.NoError(w.t, w.s.Store.CreateConnection(w.t.Context(), c))
}

// start queues a run, a millisecond after the one before: the queue's age
// order is its ids', which sort by the clock's time.
func (w *runWorld) start(conn string, prio deskrun.Priority) string {
	w.clock.Add(time.Millisecond)
	r, err := w.s.StartRun(w.t.Context(), Actor{ID: "test", Role: deskrun.RoleAdmin}, "f", wire.RunCreate{Connection: conn, Priority: string(prio)})
	require.NoError(w.t, err)
	require.Equal(w.t, deskrun.RunQueued, r.State)
	return r.ID
}

// waitRun waits until the run satisfies cond, woken by each of its
// changes, and returns it.
func (w *runWorld) waitRun(id string, what string, cond func(*deskrun.Run) bool) *deskrun.Run {
	w.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		changed, drop := w.s.RunChanged(id)
		r, err := w.s.Store.GetRun(w.t.Context(), id)
		require.NoError(w.t, err)
		if cond(r) {
			drop()
			return r
		}
		select {
		case <-changed:
		case <-deadline:
			drop()
			w.t.Fatalf("run %s: want %s, have %s (reason %q)", id, what, r.State, r.PlacementReason)
		}
	}
}

func (w *runWorld) waitReason(id, reason string) {
	w.t.Helper()
	r := w.waitRun(id, "reason "+reason, func(r *deskrun.Run) bool { return r.PlacementReason == reason })
	require.Equal(w.t, deskrun.RunQueued, r.State)
}

func TestPlacementOrderReasonsAndDeadlines(t *testing.T) {
	t.Parallel()
	w := newRunWorld(t)
	busy := w.machine("busy", 1, true)
	off := w.machine("off", 1, false)
	w.conn("alice", busy, "alice", deskrun.RunUnattended)
	w.conn("bob", busy, "bob", deskrun.RunUnattended)
	w.conn("carol", off, "carol", deskrun.RunUnattended)

	first := w.start("alice", deskrun.PriorityNormal)
	j, id := busy.job()
	require.Equal(t, first, id)

	// The machine is full: these wait, and each says why, although a pass
	// reads none of them. A run for the offline machine waits too, and
	// blocks nobody.
	blocked := w.start("carol", deskrun.PriorityHigh)
	n1 := w.start("bob", deskrun.PriorityNormal)
	n2 := w.start("alice", deskrun.PriorityNormal)
	h1 := w.start("bob", deskrun.PriorityHigh)
	full := "machine busy is busy (1 of 1 slots in use)"
	for _, id := range []string{n1, n2, h1} {
		w.waitReason(id, full)
	}
	w.waitReason(blocked, "machine off is offline")

	// Each end frees the slot: high priority first, then oldest.
	for _, want := range []string{h1, n1, n2} {
		busy.finish(j)
		j, id = busy.job()
		require.Equal(t, want, id)
		r := w.waitRun(id, "assigned", func(r *deskrun.Run) bool { return r.State != deskrun.RunQueued })
		require.Empty(t, r.PlacementReason, "a placed run has no reason")
	}
	require.Equal(t, deskrun.RunQueued, w.waitRun(blocked, "queued", func(*deskrun.Run) bool { return true }).State)

	// Past its deadline a waiting run fails, with the reason it waited for.
	late := w.start("bob", deskrun.PriorityNormal)
	w.waitReason(late, full)
	w.clock.Add(queueTimeout + time.Second)
	w.s.Kick()
	for id, reason := range map[string]string{late: full, blocked: "machine off is offline"} {
		r := w.waitRun(id, "failed", func(r *deskrun.Run) bool { return r.State.Terminal() })
		require.Equal(t, deskrun.RunFailed, r.State)
		require.Equal(t, deskrun.CodeNoCandidateMachine, r.Error.Code)
		require.Contains(t, r.Error.Message, "last reason: "+reason)
	}

	// A broken connection fails its queued runs at the next pass; so does
	// a deleted one.
	ctx := t.Context()
	broken := w.start("alice", deskrun.PriorityNormal)
	gone := w.start("bob", deskrun.PriorityNormal)
	w.waitReason(broken, full)
	w.waitReason(gone, full)
	c, err := w.s.Store.GetConnectionByName(ctx, "alice")
	require.NoError(t, err)
	c.State, c.Reason, c.StateChangedAt = deskrun.ConnectionBroken, "WrongPassword", w.clock.Now()
	require.NoError(t, w.s.Store.SetConnectionHealth(ctx, c))
	require.NoError(t, w.s.DeleteConnection(ctx, Actor{ID: "test", Role: deskrun.RoleAdmin}, "bob"))
	w.s.Kick()
	r := w.waitRun(broken, "failed", func(r *deskrun.Run) bool { return r.State.Terminal() })
	require.Equal(t, deskrun.CodeConnectionBroken, r.Error.Code)
	r = w.waitRun(gone, "failed", func(r *deskrun.Run) bool { return r.State.Terminal() })
	require.Equal(t, deskrun.CodeNotFound, r.Error.Code)
	busy.finish(j)
	w.waitRun(n2, "succeeded", func(r *deskrun.Run) bool { return r.State == deskrun.RunSucceeded })
}

func TestOneUnattendedRunPerUser(t *testing.T) {
	t.Parallel()
	w := newRunWorld(t)
	wide := w.machine("wide", 3, true)
	w.conn("dave", wide, "dave", deskrun.RunUnattended)
	w.conn("dave-too", wide, "dave", deskrun.RunUnattended) // the same user through another connection
	w.conn("dave-attended", wide, "dave", deskrun.RunAttended)
	w.conn("erin", wide, "erin", deskrun.RunUnattended)

	d1 := w.start("dave", deskrun.PriorityNormal)
	j1, id := wide.job()
	require.Equal(t, d1, id)
	d2 := w.start("dave-too", deskrun.PriorityHigh)
	conflict := "user dave already has an unattended run on wide (session conflict)"
	w.waitReason(d2, conflict)
	e1 := w.start("erin", deskrun.PriorityNormal)
	_, id = wide.job()
	require.Equal(t, e1, id, "erin takes a free slot while dave's second run waits")
	w.waitReason(d2, conflict)

	// An attended run of the same user is not held back; it fills the
	// machine, which is now the reason dave's run waits.
	a1 := w.start("dave-attended", deskrun.PriorityNormal)
	_, id = wide.job()
	require.Equal(t, a1, id)
	w.waitReason(d2, "machine wide is busy (3 of 3 slots in use)")

	wide.finish(j1)
	_, id = wide.job()
	require.Equal(t, d2, id)
}

func TestFirstProgressIsTheAck(t *testing.T) {
	t.Parallel()
	w := newRunWorld(t)
	a := w.machine("desk", 1, true)
	w.conn("alice", a, "alice", deskrun.RunUnattended)
	ctx := t.Context()

	id := w.start("alice", deskrun.PriorityNormal)
	j, _ := a.job()
	got, err := w.s.Store.GetJob(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, deskrun.JobPushed, got.State, "the assignment and the job are one commit, before the push")
	r, err := w.s.Store.GetRun(ctx, id)
	require.NoError(t, err)
	require.Equal(t, deskrun.RunAssigned, r.State)
	require.Equal(t, j.ID, r.JobID)

	// A waiter for the run's end sees its end, not a stage before it.
	ended := make(chan *deskrun.Run, 1)
	go func() {
		r, err := w.s.Run(ctx, id, 10*time.Second)
		if err != nil {
			r = nil
		}
		ended <- r
	}()

	// No ack: the first progress line stands for it.
	a.send(&wire.Frame{Type: wire.FrameProgress, Progress: &wire.JobProgress{ID: j.ID, Message: "state:logging-on"}})
	r = w.waitRun(id, "logging on", func(r *deskrun.Run) bool { return r.State == deskrun.RunLoggingOn })
	require.False(t, r.LogonAt.IsZero())
	got, err = w.s.Store.GetJob(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, deskrun.JobRunning, got.State, "the line was recorded with the ack it implies")
	require.Equal(t, "state:logging-on", got.Progress)

	a.send(&wire.Frame{Type: wire.FrameProgress, Progress: &wire.JobProgress{ID: j.ID, Message: "state:running"}})
	r = w.waitRun(id, "running", func(r *deskrun.Run) bool { return r.State == deskrun.RunRunning })
	require.False(t, r.StartedAt.IsZero())
	a.finish(j)
	w.waitRun(id, "succeeded", func(r *deskrun.Run) bool { return r.State == deskrun.RunSucceeded })
	select {
	case r = <-ended:
	case <-time.After(5 * time.Second): // Run waits 10 s: it was not woken
		t.Fatal("Run was not woken by the run's end")
	}
	require.NotNil(t, r)
	require.Equal(t, deskrun.RunSucceeded, r.State)
	got, err = w.s.Store.GetJob(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, deskrun.JobSucceeded, got.State)
}

func TestSubmitWithPushesOnlyWhatItStores(t *testing.T) {
	t.Parallel()
	w := newRunWorld(t)
	a := w.machine("desk", 1, true)
	ctx := t.Context()

	declined := &deskrun.Job{MachineID: a.m.ID, Kind: deskrun.JobNoop}
	var state deskrun.JobState
	stored, err := w.hub.SubmitWith(ctx, declined, func(_ context.Context, j *deskrun.Job) (bool, error) {
		state = j.State
		return false, nil
	})
	require.NoError(t, err)
	require.False(t, stored)
	require.Equal(t, deskrun.JobPushed, state, "the agent is connected: the job would be stored pushed")
	_, err = w.s.Store.GetJob(ctx, declined.ID)
	require.True(t, deskrun.IsCode(err, deskrun.CodeNotFound))

	next := &deskrun.Job{MachineID: a.m.ID, Kind: deskrun.JobNoop}
	require.NoError(t, w.hub.Submit(ctx, next))
	j, _ := a.job()
	require.Equal(t, next.ID, j.ID, "the declined job was never pushed")

	// A machine without its agent gets its job stored queued.
	offline := w.machine("later", 1, false)
	queued := &deskrun.Job{MachineID: offline.m.ID, Kind: deskrun.JobNoop}
	stored, err = w.hub.SubmitWith(ctx, queued, func(ctx context.Context, j *deskrun.Job) (bool, error) {
		state = j.State
		return true, w.s.Store.CreateJob(ctx, j)
	})
	require.NoError(t, err)
	require.True(t, stored)
	require.Equal(t, deskrun.JobQueued, state)
}
