package control

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/notify"
	"github.com/deskrun/deskrun/internal/store"
	"github.com/deskrun/deskrun/internal/store/sqlite"
)

// clock is an injected clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(t time.Time)     { c.mu.Lock(); c.now = t; c.mu.Unlock() }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

var t0 = time.Date(2025, 6, 2, 9, 30, 0, 0, time.UTC) // a Monday

func openStore(t *testing.T, path string) store.Store {
	db, err := sqlite.Open(t.Context(), path, sqlite.WithAutoMigrate())
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

func flowService(t *testing.T, st store.Store, c *clock) *Service {
	box, err := NewSecretBox(make([]byte, 32))
	require.NoError(t, err)
	s := &Service{Store: st, Log: slog.New(slog.DiscardHandler), Now: c.Now, Secrets: box,
		Flows: FlowPolicy{NoTimer: true, Sleep: func(context.Context, time.Duration) error { return nil }}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); s.WaitFlows() })
	require.NoError(t, s.StartFlows(ctx))
	return s
}

func apply(t *testing.T, s *Service, y string) {
	t.Helper()
	_, _, _, err := s.ApplyFlow(t.Context(), Actor{ID: "test"}, "f.yaml", []byte(y))
	require.NoError(t, err)
}

func waitRun(t *testing.T, s *Service, id string) (*deskrun.FlowRun, []*deskrun.FlowStep) {
	t.Helper()
	r, steps, err := s.FlowRun(t.Context(), id, 10*time.Second)
	require.NoError(t, err)
	require.True(t, r.State.Terminal(), "run %s is %s", id, r.State)
	return r, steps
}

// target is a test HTTP server that records what it gets.
type target struct {
	*httptest.Server
	hits   atomic.Int32
	mu     sync.Mutex
	bodies []string
	auth   []string
	status func(n int32) int
}

func newTarget(t *testing.T) *target {
	tg := &target{status: func(int32) int { return 200 }}
	tg.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := tg.hits.Add(1)
		b, _ := io.ReadAll(r.Body)
		tg.mu.Lock()
		tg.bodies = append(tg.bodies, string(b))
		tg.auth = append(tg.auth, r.Header.Get("Authorization"))
		tg.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(tg.status(n))
		_, _ = w.Write([]byte(`{"ok": true, "n": ` + string(rune('0'+n%10)) + `}`))
	}))
	t.Cleanup(tg.Close)
	return tg
}

func TestWebhookToHTTPStep(t *testing.T) {
	t.Parallel()
	c := &clock{now: t0}
	s := flowService(t, openStore(t, ":memory:"), c)
	tg := newTarget(t)
	ctx := t.Context()
	require.NoError(t, s.SetSecret(ctx, Actor{}, "hook_key", []byte("hk")))
	require.NoError(t, s.SetSecret(ctx, Actor{}, "api_token", []byte("tok123")))
	apply(t, s, `name: hooked
triggers:
  webhook: {id: orders, secret: hook_key}
steps:
  - id: post
    if: trigger.body.amount > 10
    http:
      url: "`+tg.URL+`/orders"
      headers: {Authorization: "Bearer ${{ secrets.api_token }}"}
      json: '{"order": trigger.body.id, "via": trigger.headers["x-source"]}'
outputs:
  status: "${{ steps.post.outputs.status }}"
  ok: "${{ steps.post.outputs.body.ok }}"
`)
	body := []byte(`{"id": "A-1", "amount": 42}`)
	h := http.Header{}
	h.Set(notify.SignatureHeader, notify.Sign([]byte("hk"), c.Now(), body))
	h.Set("X-Source", "shop")
	h.Set("Idempotency-Key", "k1")
	r, created, err := s.Webhook(ctx, "orders", h, body)
	require.NoError(t, err)
	require.True(t, created)
	r, steps := waitRun(t, s, r.ID)
	require.Equal(t, deskrun.FlowRunSucceeded, r.State, "%+v", r.Error)
	require.JSONEq(t, `{"status": 200, "ok": true}`, string(r.Outputs))
	require.Len(t, steps, 1)
	require.JSONEq(t, `{"order":"A-1","via":"shop"}`, tg.bodies[0])
	require.Equal(t, "Bearer tok123", tg.auth[0])
	var tr map[string]any
	require.NoError(t, json.Unmarshal(r.Trigger, &tr))
	require.Equal(t, "webhook", tr["kind"])
	require.NotContains(t, string(r.Trigger), "v1=", "the signature is not kept")

	// The same idempotency key (even freshly signed) gives the same run.
	c.Add(time.Second)
	h.Set(notify.SignatureHeader, notify.Sign([]byte("hk"), c.Now(), body))
	again, created, err := s.Webhook(ctx, "orders", h, body)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, r.ID, again.ID)
	require.EqualValues(t, 1, tg.hits.Load())

	// Refusals.
	sign := func(secret string, at time.Time, b []byte) http.Header {
		h := http.Header{}
		h.Set(notify.SignatureHeader, notify.Sign([]byte(secret), at, b))
		return h
	}
	for name, hdr := range map[string]http.Header{
		"missing":       {},
		"wrong secret":  sign("nope", c.Now(), body),
		"old timestamp": sign("hk", c.Now().Add(-10*time.Minute), body),
		"garbage":       {notify.SignatureHeader: {"v1=zz"}},
	} {
		_, _, err := s.Webhook(ctx, "orders", hdr, body)
		require.True(t, deskrun.IsCode(err, deskrun.CodeWebhookSignatureInvalid), "%s: %v", name, err)
	}
	replay := sign("hk", c.Now(), body)
	_, _, err = s.Webhook(ctx, "orders", replay, body)
	require.NoError(t, err)
	_, _, err = s.Webhook(ctx, "orders", replay, body)
	require.True(t, deskrun.IsCode(err, deskrun.CodeWebhookSignatureInvalid), "a replay: %v", err)
	_, _, err = s.Webhook(ctx, "nohook", replay, body)
	require.True(t, deskrun.IsCode(err, deskrun.CodeNotFound))

	// A condition that is false skips the step.
	small := []byte(`{"id": "A-2", "amount": 1}`)
	r, _, err = s.Webhook(ctx, "orders", sign("hk", c.Now(), small), small)
	require.NoError(t, err)
	_, steps = waitRun(t, s, r.ID)
	require.Equal(t, deskrun.FlowStepSkipped, steps[0].State)
}

func TestHTTPRetries(t *testing.T) {
	t.Parallel()
	c := &clock{now: t0}
	s := flowService(t, openStore(t, ":memory:"), c)
	tg := newTarget(t)
	tg.status = func(n int32) int {
		if n < 3 {
			return 503
		}
		return 200
	}
	apply(t, s, "name: flaky\nsteps:\n  - id: a\n    retry: {max: 5, backoff: 1s}\n    http: {url: '"+tg.URL+"'}\n")
	r, err := s.StartFlowRun(t.Context(), Actor{}, "flaky", nil, map[string]any{"kind": "api"})
	require.NoError(t, err)
	r, steps := waitRun(t, s, r.ID)
	require.Equal(t, deskrun.FlowRunSucceeded, r.State)
	require.Len(t, steps, 3)
	require.EqualValues(t, 3, tg.hits.Load())

	// A 400 is not transient: one attempt only.
	tg2 := newTarget(t)
	tg2.status = func(int32) int { return 400 }
	apply(t, s, "name: bad\nsteps:\n  - id: a\n    retry: {max: 5}\n    http: {url: '"+tg2.URL+"'}\n  - id: b\n    http: {url: '"+tg2.URL+"'}\n")
	r, err = s.StartFlowRun(t.Context(), Actor{}, "bad", nil, nil)
	require.NoError(t, err)
	r, steps = waitRun(t, s, r.ID)
	require.Equal(t, deskrun.FlowRunFailed, r.State)
	require.Equal(t, deskrun.CodeFlowStepFailed, r.Error.Code)
	require.Contains(t, r.Error.Message, "step a: GET 127.0.0.1")
	require.Len(t, steps, 1, "a failed step stops the run")
	require.EqualValues(t, 1, tg2.hits.Load())
}

func TestFlowInputs(t *testing.T) {
	t.Parallel()
	s := flowService(t, openStore(t, ":memory:"), &clock{now: t0})
	apply(t, s, "name: typed\ninputs: [{name: n, type: number, required: true}]\nsteps:\n  - id: a\n    http: {url: 'http://127.0.0.1:1'}\n")
	for _, in := range []map[string]any{{}, {"n": "many"}, {"n": true}, {"n": 1, "x": 2}} {
		_, err := s.StartFlowRun(t.Context(), Actor{}, "typed", in, nil)
		require.True(t, deskrun.IsCode(err, deskrun.CodeFlowInputInvalid), "%v: %v", in, err)
	}
	_, err := s.StartFlowRun(t.Context(), Actor{}, "missing", nil, nil)
	require.True(t, deskrun.IsCode(err, deskrun.CodeNotFound))
}

func TestSchedules(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "d.db")
	c := &clock{now: t0}
	st := openStore(t, path)
	s := flowService(t, st, c)
	tg := newTarget(t)
	apply(t, s, `name: hourly
triggers:
  schedule: {cron: "0 * * * *", timezone: Europe/Paris}
steps:
  - id: a
    http: {url: "`+tg.URL+`"}
`)
	apply(t, s, `name: catchup
triggers:
  schedule: {cron: "0 12 * * *", missed: run-once}
steps:
  - id: a
    http: {url: "`+tg.URL+`"}
`)
	ctx := t.Context()
	count := func(flow string) int {
		rs, err := s.ListFlowRuns(ctx, store.FlowRunFilter{Flow: flow})
		require.NoError(t, err)
		return len(rs)
	}
	n, err := s.FireSchedules(ctx)
	require.NoError(t, err)
	require.Zero(t, n, "nothing is due at 09:30")

	// 10:00:05: the hourly tick fires, once, even from two servers.
	c.Set(t0.Add(30*time.Minute + 5*time.Second))
	other := flowService(t, openStore(t, path), c)
	var wg sync.WaitGroup
	var total atomic.Int32
	for _, srv := range []*Service{s, other, s, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := srv.FireSchedules(ctx)
			if err == nil {
				total.Add(int32(n))
			}
		}()
	}
	wg.Wait()
	require.EqualValues(t, 1, total.Load())
	require.Equal(t, 1, count("hourly"))
	rs, _ := s.ListFlowRuns(ctx, store.FlowRunFilter{Flow: "hourly"})
	require.Contains(t, string(rs[0].Trigger), `"tick":"2025-06-02T10:00:00Z"`)

	// The server is down from 10:00 to 15:30: hourly skips the missed
	// ticks, catchup (run-once) runs once for its missed 12:00.
	c.Set(t0.Add(6 * time.Hour))
	n, err = s.FireSchedules(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, 1, count("hourly"))
	require.Equal(t, 1, count("catchup"))
	n, err = s.FireSchedules(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
	// Back on time: 16:00 fires.
	c.Set(time.Date(2025, 6, 2, 16, 0, 1, 0, time.UTC))
	n, err = s.FireSchedules(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, 2, count("hourly"))
}

func TestConcurrencySkip(t *testing.T) {
	t.Parallel()
	c := &clock{now: t0}
	s := flowService(t, openStore(t, ":memory:"), c)
	release := make(chan struct{})
	tg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	t.Cleanup(tg.Close)
	t.Cleanup(func() { close(release) })
	apply(t, s, `name: slow
triggers:
  schedule: {cron: "* * * * *"}
concurrency: {max: 1, overlap: skip}
steps:
  - id: a
    http: {url: "`+tg.URL+`", timeout: 1m}
`)
	ctx := t.Context()
	c.Add(time.Minute)
	n, err := s.FireSchedules(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	c.Add(time.Minute)
	n, err = s.FireSchedules(ctx)
	require.NoError(t, err)
	require.Zero(t, n, "the tick overlaps a run in progress and is skipped")
	// A manual run queues behind the limit.
	r, err := s.StartFlowRun(ctx, Actor{}, "slow", nil, nil)
	require.NoError(t, err)
	require.Equal(t, deskrun.FlowRunQueued, r.State)
}

func TestResumeAfterCrash(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "d.db")
	c := &clock{now: t0}
	st := openStore(t, path)
	tg := newTarget(t)
	y := func(idempotent bool) string {
		return `name: two
steps:
  - id: a
    http: {url: "` + tg.URL + `/a"}
  - id: b
    http: {url: "` + tg.URL + `/b", idempotent: ` + map[bool]string{true: "true", false: "false"}[idempotent] + `}
`
	}
	ctx := t.Context()
	for _, idempotent := range []bool{false, true} {
		// A server committed step a and the start of b, then died.
		s := &Service{Store: st, Log: slog.New(slog.DiscardHandler), Now: c.Now, Flows: FlowPolicy{NoTimer: true}}
		fv, def, _, err := s.ApplyFlow(ctx, Actor{}, "f.yaml", []byte(y(idempotent)))
		require.NoError(t, err)
		r, err := s.newFlowRun(fv, def, nil, map[string]any{"kind": "api"})
		require.NoError(t, err)
		r.State = deskrun.FlowRunRunning
		require.NoError(t, st.CreateFlowRun(ctx, r))
		a := &deskrun.FlowStep{RunID: r.ID, StepID: "a", Attempt: 1, Kind: "http", State: deskrun.FlowStepRunning, StartedAt: c.Now()}
		require.NoError(t, st.StartFlowStep(ctx, a))
		a.State, a.Outputs, a.FinishedAt = deskrun.FlowStepSucceeded, json.RawMessage(`{"status":200}`), c.Now()
		_, err = st.FinishFlowStep(ctx, a)
		require.NoError(t, err)
		require.NoError(t, st.StartFlowStep(ctx, &deskrun.FlowStep{RunID: r.ID, StepID: "b", Attempt: 1, Kind: "http", State: deskrun.FlowStepRunning, StartedAt: c.Now()}))

		before := tg.hits.Load()
		restarted := flowService(t, st, c)
		got, steps := waitRun(t, restarted, r.ID)
		if idempotent {
			require.Equal(t, deskrun.FlowRunSucceeded, got.State)
			require.Len(t, steps, 3, "a, b#1 interrupted, b#2")
			require.Equal(t, before+1, tg.hits.Load(), "a is not sent again; b once")
		} else {
			require.Equal(t, deskrun.FlowRunFailed, got.State)
			require.Equal(t, deskrun.CodeFlowStepInterrupted, got.Error.Code)
			require.Equal(t, before, tg.hits.Load(), "nothing is sent twice")
		}
	}
}

// gate is an HTTP target that holds each request until released, and says
// when one arrives.
type gate struct {
	*httptest.Server
	arrived chan struct{}
	release chan struct{}
	hits    atomic.Int32
	once    sync.Once
}

func newGate(t *testing.T) *gate {
	g := &gate{arrived: make(chan struct{}, 16), release: make(chan struct{})}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.hits.Add(1)
		g.arrived <- struct{}{}
		select {
		case <-g.release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(g.Close)
	t.Cleanup(g.open)
	return g
}

// open lets every request held, and every later one, through.
func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

func (g *gate) wait(t *testing.T) {
	t.Helper()
	select {
	case <-g.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("no request reached the target")
	}
}

// TestAdmittedRunStartsInOneCommit: a webhook's delivery, its run (running
// at once) and the first step's attempt are one commit, and the step acts
// with nothing more committed.
func TestAdmittedRunStartsInOneCommit(t *testing.T) {
	t.Parallel()
	c := &clock{now: t0}
	st := openStore(t, filepath.Join(t.TempDir(), "d.db"))
	s := flowService(t, st, c)
	g := newGate(t)
	ctx := t.Context()
	require.NoError(t, s.SetSecret(ctx, Actor{}, "hook_key", []byte("hk")))
	apply(t, s, "name: gated\ntriggers:\n  webhook: {id: g, secret: hook_key}\nsteps:\n  - id: a\n    http: {url: '"+g.URL+"'}\n")
	stats := st.(interface{ CommitStats() (int64, int64) })
	before, _ := stats.CommitStats()
	body := []byte(`{"n": 1}`)
	h := http.Header{}
	h.Set(notify.SignatureHeader, notify.Sign([]byte("hk"), c.Now(), body))
	r, created, err := s.Webhook(ctx, "g", h, body)
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, deskrun.FlowRunRunning, r.State)
	require.Equal(t, t0, r.StartedAt)

	g.wait(t)
	after, _ := stats.CommitStats()
	require.Equal(t, before+1, after, "delivery, run and first attempt in one commit")
	steps, err := st.ListFlowSteps(ctx, r.ID)
	require.NoError(t, err)
	require.Len(t, steps, 1)
	require.Equal(t, deskrun.FlowStepRunning, steps[0].State)
	require.Equal(t, r.StartedAt, steps[0].StartedAt)

	g.open()
	r, steps = waitRun(t, s, r.ID)
	require.Equal(t, deskrun.FlowRunSucceeded, r.State, "%+v", r.Error)
	require.Len(t, steps, 1)
	require.EqualValues(t, 1, g.hits.Load())
}

// TestConcurrencyQueue: past the limit a run queues, with no step, and
// starts when the run before it ends.
func TestConcurrencyQueue(t *testing.T) {
	t.Parallel()
	c := &clock{now: t0}
	s := flowService(t, openStore(t, ":memory:"), c)
	g := newGate(t)
	apply(t, s, "name: one\nconcurrency: {max: 1}\nsteps:\n  - id: a\n    http: {url: '"+g.URL+"', timeout: 1m}\n")
	ctx := t.Context()
	r1, err := s.StartFlowRun(ctx, Actor{}, "one", nil, nil)
	require.NoError(t, err)
	require.Equal(t, deskrun.FlowRunRunning, r1.State)
	g.wait(t)
	c.Add(time.Second)
	r2, err := s.StartFlowRun(ctx, Actor{}, "one", nil, nil)
	require.NoError(t, err)
	require.Equal(t, deskrun.FlowRunQueued, r2.State)
	require.True(t, r2.StartedAt.IsZero())
	_, steps, err := s.FlowRun(ctx, r2.ID, 0)
	require.NoError(t, err)
	require.Empty(t, steps)

	g.open()
	r1, _ = waitRun(t, s, r1.ID)
	r2, steps = waitRun(t, s, r2.ID)
	require.Equal(t, deskrun.FlowRunSucceeded, r1.State)
	require.Equal(t, deskrun.FlowRunSucceeded, r2.State)
	require.Len(t, steps, 1)
	require.False(t, r2.StartedAt.Before(r1.FinishedAt), "the queued run started after the first ended")
	require.EqualValues(t, 2, g.hits.Load())
}

// TestCrashAfterAdmission: the server dies right after the commit that
// admits a run with its first attempt, before the step acts. The restart
// resumes the run from that attempt as from any started one.
func TestCrashAfterAdmission(t *testing.T) {
	t.Parallel()
	for _, idempotent := range []bool{false, true} {
		c := &clock{now: t0}
		st := openStore(t, filepath.Join(t.TempDir(), "d.db"))
		tg := newTarget(t)
		// No engine: what the admission commits is all that happens.
		dead := &Service{Store: st, Log: slog.New(slog.DiscardHandler), Now: c.Now, Flows: FlowPolicy{NoTimer: true}}
		_, _, _, err := dead.ApplyFlow(t.Context(), Actor{}, "f.yaml", []byte(fmt.Sprintf(
			"name: one\nsteps:\n  - id: a\n    http: {url: '%s', idempotent: %t}\n", tg.URL, idempotent)))
		require.NoError(t, err)
		r, err := dead.StartFlowRun(t.Context(), Actor{}, "one", nil, nil)
		require.NoError(t, err)
		require.Equal(t, deskrun.FlowRunRunning, r.State)

		restarted := flowService(t, st, c)
		got, steps := waitRun(t, restarted, r.ID)
		if idempotent {
			require.Equal(t, deskrun.FlowRunSucceeded, got.State, "%+v", got.Error)
			require.Len(t, steps, 2, "a#1 interrupted, a#2")
			require.EqualValues(t, 1, tg.hits.Load())
		} else {
			require.Equal(t, deskrun.FlowRunFailed, got.State)
			require.Equal(t, deskrun.CodeFlowStepInterrupted, got.Error.Code)
			require.Zero(t, tg.hits.Load())
		}
	}
}
