package storetest

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/store"
)

func newFlowVersion(name, def string) *deskrun.FlowVersion {
	return &deskrun.FlowVersion{Name: name, Definition: []byte(def), Digest: "d-" + def, HookID: "hook-" + name, CreatedAt: t0}
}

func newFlowRun(flow string, n int) *deskrun.FlowRun {
	created := at(time.Duration(n) * time.Millisecond)
	return &deskrun.FlowRun{ID: deskrun.NewID("f", created), Flow: flow, Version: 1, Trigger: json.RawMessage(`{"kind":"manual"}`),
		Inputs: json.RawMessage(`{"who":"Ada"}`), State: deskrun.FlowRunRunning, CreatedAt: created, StartedAt: created, UpdatedAt: created}
}

var flowTests = map[string]func(t *testing.T, s store.Store){
	"FlowVersions": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		f := newFlowVersion("a", "one")
		created, err := s.CreateFlowVersion(ctx, f)
		require.NoError(t, err)
		require.True(t, created)
		require.Equal(t, 1, f.Version)
		again := newFlowVersion("a", "one")
		created, err = s.CreateFlowVersion(ctx, again)
		require.NoError(t, err)
		require.False(t, created, "the same definition makes no version")
		require.Equal(t, 1, again.Version)
		v2 := newFlowVersion("a", "two")
		_, err = s.CreateFlowVersion(ctx, v2)
		require.NoError(t, err)
		require.Equal(t, 2, v2.Version)
		_, err = s.CreateFlowVersion(ctx, newFlowVersion("b", "one"))
		require.NoError(t, err)

		got, err := s.GetFlowVersion(ctx, "a", 0)
		require.NoError(t, err)
		require.Equal(t, v2, got)
		got, err = s.GetFlowVersion(ctx, "a", 1)
		require.NoError(t, err)
		require.Equal(t, f, got)
		_, err = s.GetFlowVersion(ctx, "a", 9)
		requireCode(t, err, deskrun.CodeNotFound)
		_, err = s.GetFlowVersion(ctx, "zz", 0)
		requireCode(t, err, deskrun.CodeNotFound)
		_, err = s.CreateFlowVersion(ctx, &deskrun.FlowVersion{Name: "x"})
		requireCode(t, err, deskrun.CodeInvalid)

		all, err := s.ListFlows(ctx)
		require.NoError(t, err)
		require.Len(t, all, 2)
		require.Equal(t, "a", all[0].Name)
		require.Equal(t, 2, all[0].Version)

		ok, err := s.ClaimScheduleTick(ctx, "a", at(time.Hour), "")
		require.NoError(t, err)
		require.True(t, ok)
		require.NoError(t, s.DeleteFlow(ctx, "a"))
		_, err = s.GetFlowVersion(ctx, "a", 0)
		requireCode(t, err, deskrun.CodeNotFound)
		last, err := s.LastScheduleTick(ctx, "a")
		require.NoError(t, err)
		require.True(t, last.IsZero(), "deleting a flow forgets its ticks")
		requireCode(t, s.DeleteFlow(ctx, "a"), deskrun.CodeNotFound)
	},
	"FlowRuns": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		r1, r2, r3 := newFlowRun("a", 1), newFlowRun("a", 2), newFlowRun("b", 3)
		r2.State = deskrun.FlowRunQueued
		for _, r := range []*deskrun.FlowRun{r1, r2, r3} {
			require.NoError(t, s.CreateFlowRun(ctx, r))
		}
		requireCode(t, s.CreateFlowRun(ctx, r1), deskrun.CodeConflict)
		requireCode(t, s.CreateFlowRun(ctx, &deskrun.FlowRun{ID: "f_x"}), deskrun.CodeInvalid)
		got, err := s.GetFlowRun(ctx, r1.ID)
		require.NoError(t, err)
		require.Equal(t, r1, got)
		_, err = s.GetFlowRun(ctx, "f_missing")
		requireCode(t, err, deskrun.CodeNotFound)

		list, err := s.ListFlowRuns(ctx, store.FlowRunFilter{Flow: "a"})
		require.NoError(t, err)
		require.Equal(t, []string{r2.ID, r1.ID}, ids(list, func(r *deskrun.FlowRun) string { return r.ID }))
		list, err = s.ListFlowRuns(ctx, store.FlowRunFilter{Oldest: true, Limit: 2})
		require.NoError(t, err)
		require.Equal(t, []string{r1.ID, r2.ID}, ids(list, func(r *deskrun.FlowRun) string { return r.ID }))
		list, err = s.ListFlowRuns(ctx, store.FlowRunFilter{States: []deskrun.FlowRunState{deskrun.FlowRunQueued}})
		require.NoError(t, err)
		require.Equal(t, []string{r2.ID}, ids(list, func(r *deskrun.FlowRun) string { return r.ID }))

		r1.State, r1.Outputs, r1.FinishedAt, r1.UpdatedAt = deskrun.FlowRunFailed, json.RawMessage(`{"x":1}`), at(time.Minute), at(time.Minute)
		r1.Error = fullError()
		ok, err := s.UpdateFlowRun(ctx, r1)
		require.NoError(t, err)
		require.True(t, ok)
		got, err = s.GetFlowRun(ctx, r1.ID)
		require.NoError(t, err)
		require.Equal(t, r1, got)
		r1.State = deskrun.FlowRunSucceeded
		ok, err = s.UpdateFlowRun(ctx, r1)
		require.NoError(t, err)
		require.False(t, ok, "a terminal run does not change")
		_, err = s.UpdateFlowRun(ctx, &deskrun.FlowRun{ID: "f_missing", State: deskrun.FlowRunFailed})
		requireCode(t, err, deskrun.CodeNotFound)
	},
	"FlowSteps": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		r := newFlowRun("a", 1)
		require.NoError(t, s.CreateFlowRun(ctx, r))
		st := &deskrun.FlowStep{RunID: r.ID, StepID: "desk", Attempt: 1, Kind: "desktop", State: deskrun.FlowStepRunning, StartedAt: at(time.Second)}
		require.NoError(t, s.StartFlowStep(ctx, st))
		requireCode(t, s.StartFlowStep(ctx, st), deskrun.CodeConflict)
		requireCode(t, s.StartFlowStep(ctx, &deskrun.FlowStep{RunID: "f_missing", StepID: "x", Attempt: 1, Kind: "http", State: deskrun.FlowStepRunning}), deskrun.CodeNotFound)
		require.NoError(t, s.SetFlowStepDesktopRun(ctx, r.ID, "desk", 1, "r_1"))
		requireCode(t, s.SetFlowStepDesktopRun(ctx, r.ID, "desk", 2, "r_1"), deskrun.CodeNotFound)
		st2 := &deskrun.FlowStep{RunID: r.ID, StepID: "post", Attempt: 1, Kind: "http", State: deskrun.FlowStepRunning, StartedAt: at(2 * time.Second)}
		require.NoError(t, s.StartFlowStep(ctx, st2))

		st.State, st.Outputs, st.FinishedAt, st.DesktopRunID = deskrun.FlowStepSucceeded, json.RawMessage(`{"uid":1}`), at(3*time.Second), "r_1"
		ok, err := s.FinishFlowStep(ctx, st)
		require.NoError(t, err)
		require.True(t, ok)
		st.State = deskrun.FlowStepFailed
		ok, err = s.FinishFlowStep(ctx, st)
		require.NoError(t, err)
		require.False(t, ok, "a step's result is recorded once")
		st.State = deskrun.FlowStepSucceeded
		st2.State, st2.Error, st2.FinishedAt = deskrun.FlowStepFailed, fullError(), at(4*time.Second)
		_, err = s.FinishFlowStep(ctx, st2)
		require.NoError(t, err)

		steps, err := s.ListFlowSteps(ctx, r.ID)
		require.NoError(t, err)
		require.Equal(t, []*deskrun.FlowStep{st, st2}, steps)
	},
	"ScheduleTicks": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		last, err := s.LastScheduleTick(ctx, "a")
		require.NoError(t, err)
		require.True(t, last.IsZero())
		// Two servers race for the same tick: exactly one wins.
		var wg sync.WaitGroup
		wins := make(chan bool, 8)
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ok, err := s.ClaimScheduleTick(ctx, "a", at(time.Hour), "f_"+string(rune('a'+i)))
				if err == nil {
					wins <- ok
				}
			}()
		}
		wg.Wait()
		close(wins)
		n := 0
		for ok := range wins {
			if ok {
				n++
			}
		}
		require.Equal(t, 1, n)
		ok, err := s.ClaimScheduleTick(ctx, "a", at(2*time.Hour), "")
		require.NoError(t, err)
		require.True(t, ok)
		last, err = s.LastScheduleTick(ctx, "a")
		require.NoError(t, err)
		require.Equal(t, at(2*time.Hour), last)
	},
	"WebhookDeliveries": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		first, created, err := s.RecordWebhookDelivery(ctx, "h", "k1", "f_1", t0)
		require.NoError(t, err)
		require.True(t, created)
		require.Equal(t, "f_1", first)
		first, created, err = s.RecordWebhookDelivery(ctx, "h", "k1", "f_2", t0)
		require.NoError(t, err)
		require.False(t, created)
		require.Equal(t, "f_1", first)
		_, created, err = s.RecordWebhookDelivery(ctx, "other", "k1", "f_3", t0)
		require.NoError(t, err)
		require.True(t, created, "keys are per hook")
	},
	"Secrets": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		require.NoError(t, s.PutSecret(ctx, "b", []byte("sealed-1"), t0))
		require.NoError(t, s.PutSecret(ctx, "a", []byte("sealed-2"), t0))
		require.NoError(t, s.PutSecret(ctx, "b", []byte("sealed-3"), at(time.Minute)))
		requireCode(t, s.PutSecret(ctx, "c", nil, t0), deskrun.CodeInvalid)
		v, err := s.GetSecret(ctx, "b")
		require.NoError(t, err)
		require.Equal(t, []byte("sealed-3"), v)
		_, err = s.GetSecret(ctx, "zz")
		requireCode(t, err, deskrun.CodeNotFound)
		list, err := s.ListSecrets(ctx)
		require.NoError(t, err)
		require.Equal(t, []deskrun.Secret{{Name: "a", UpdatedAt: t0}, {Name: "b", UpdatedAt: at(time.Minute)}}, list)
		require.NoError(t, s.DeleteSecret(ctx, "a"))
		requireCode(t, s.DeleteSecret(ctx, "a"), deskrun.CodeNotFound)
	},
}
