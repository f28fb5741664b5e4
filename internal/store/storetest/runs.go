package storetest

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/store"
)

// runSeq makes runs one millisecond apart, so that id order is creation
// order whatever NewID's random bits.
type runSeq struct{ n int }

func (q *runSeq) run(flow, connectionID string, p deskrun.Priority) *deskrun.Run {
	q.n++
	created := at(time.Duration(q.n) * time.Millisecond)
	return &deskrun.Run{
		ID:            deskrun.NewID("r", created),
		Flow:          flow,
		Version:       3,
		Digest:        "sha256:" + flow,
		ConnectionID:  connectionID,
		Priority:      p,
		Inputs:        json.RawMessage(`{"invoice":"INV-1","count":2}`),
		State:         deskrun.RunQueued,
		Screenshot:    true,
		CreatedAt:     created,
		UpdatedAt:     created,
		QueueDeadline: created.Add(time.Hour),
	}
}

func createRun(t *testing.T, s store.Tx, r *deskrun.Run) *deskrun.Run {
	t.Helper()
	require.NoError(t, s.CreateRun(t.Context(), r))
	return r
}

func getRun(t *testing.T, s store.Tx, id string) *deskrun.Run {
	t.Helper()
	r, err := s.GetRun(t.Context(), id)
	require.NoError(t, err)
	return r
}

func runIDs(rs []*deskrun.Run) []string { return ids(rs, func(r *deskrun.Run) string { return r.ID }) }

// finished returns r as an agent reports it done: every mutable field set.
func finished(r *deskrun.Run, state deskrun.RunState) *deskrun.Run {
	f := *r
	code := 0
	f.State, f.MachineID, f.JobID, f.PlacementReason = state, "m_a", "j_"+r.ID, ""
	f.Outputs = json.RawMessage(`{"total":42}`)
	f.ExitCode = &code
	f.Timings = json.RawMessage(`{"logon_ms":120,"run_ms":5300}`)
	f.AssignedAt, f.LogonAt, f.StartedAt = at(time.Second), at(2*time.Second), at(3*time.Second)
	f.FinishedAt, f.UpdatedAt = at(time.Minute), at(time.Minute)
	if state != deskrun.RunSucceeded {
		f.Error = fullError()
	}
	return &f
}

var runTests = map[string]func(t *testing.T, s store.Store){
	"CreateGet": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		queued := createRun(t, s, q.run("invoices", "c_1", deskrun.PriorityNormal))
		require.Equal(t, queued, getRun(t, s, queued.ID))

		// Every field, a non-zero exit code and an error included.
		full := q.run("invoices", "c_1", deskrun.PriorityHigh)
		code := 3
		full.MachineID, full.JobID, full.State, full.PlacementReason = "m_a", "j_full", deskrun.RunFailed, "busy"
		full.Outputs, full.Timings, full.ExitCode, full.Error = json.RawMessage(`[1,2]`), json.RawMessage(`{"run_ms":1}`), &code, fullError()
		full.AssignedAt, full.LogonAt, full.StartedAt, full.FinishedAt = at(time.Second), at(2*time.Second), at(3*time.Second), at(4*time.Second)
		createRun(t, s, full)
		require.Equal(t, full, getRun(t, s, full.ID))

		got, err := s.GetRunByJob(ctx, "j_full")
		require.NoError(t, err)
		require.Equal(t, full, got)
	},
	"ZeroValues": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		r := &deskrun.Run{ID: "r_zero", Flow: "f", Priority: deskrun.PriorityNormal, State: deskrun.RunQueued}
		createRun(t, s, r)
		got := getRun(t, s, r.ID)
		require.Equal(t, r, got, "nil JSON, nil exit code, nil error and zero times read back as such")
		require.Nil(t, got.ExitCode)

		// Exit code 0 is not "no exit code".
		zero := 0
		r2 := &deskrun.Run{ID: "r_exit0", Flow: "f", Priority: deskrun.PriorityNormal, State: deskrun.RunSucceeded, ExitCode: &zero}
		createRun(t, s, r2)
		got, err := s.GetRun(ctx, r2.ID)
		require.NoError(t, err)
		require.NotNil(t, got.ExitCode)
		require.Equal(t, 0, *got.ExitCode)
	},
	"NotFound": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		createRun(t, s, q.run("invoices", "c_1", deskrun.PriorityNormal)) // queued: no job yet

		_, err := s.GetRun(ctx, "r_missing")
		requireCode(t, err, deskrun.CodeNotFound)
		require.ErrorContains(t, err, `run "r_missing" not found`)
		_, err = s.GetRunByJob(ctx, "j_missing")
		requireCode(t, err, deskrun.CodeNotFound)
		require.ErrorContains(t, err, "j_missing")
		_, err = s.GetRunByJob(ctx, "")
		requireCode(t, err, deskrun.CodeNotFound) // not the queued run without a job

		ok, err := s.UpdateRun(ctx, &deskrun.Run{ID: "r_missing", State: deskrun.RunRunning})
		requireCode(t, err, deskrun.CodeNotFound)
		require.False(t, ok)

		err = s.AppendRunLog(ctx, "r_missing", []deskrun.LogChunk{{Seq: 1, Stream: "stdout", Data: []byte("x")}})
		requireCode(t, err, deskrun.CodeNotFound)
		require.ErrorContains(t, err, "r_missing")
		_, err = s.ReadRunLog(ctx, "r_missing", 0, 0)
		requireCode(t, err, deskrun.CodeNotFound)

		requireCode(t, s.SaveRunScreenshot(ctx, "r_missing", []byte("png")), deskrun.CodeNotFound)
		_, err = s.GetRunScreenshot(ctx, "r_missing")
		requireCode(t, err, deskrun.CodeNotFound)
	},
	"Refusals": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		r := createRun(t, s, q.run("invoices", "c_1", deskrun.PriorityNormal))

		dup := *r
		dup.Flow = "other"
		err := s.CreateRun(ctx, &dup)
		requireCode(t, err, deskrun.CodeConflict)
		require.ErrorContains(t, err, r.ID)

		for name, edit := range map[string]func(*deskrun.Run){
			"no id":        func(r *deskrun.Run) { r.ID = "" },
			"no flow":      func(r *deskrun.Run) { r.Flow = "" },
			"no state":     func(r *deskrun.Run) { r.State = "" },
			"no priority":  func(r *deskrun.Run) { r.Priority = "" },
			"odd priority": func(r *deskrun.Run) { r.Priority = "urgent" },
		} {
			bad := q.run("invoices", "c_1", deskrun.PriorityNormal)
			edit(bad)
			err := s.CreateRun(ctx, bad)
			require.Error(t, err, name)
			requireCode(t, err, deskrun.CodeInvalid)
		}
		rs, err := s.ListRuns(ctx, store.RunFilter{})
		require.NoError(t, err)
		require.Equal(t, []*deskrun.Run{r}, rs, "refused runs are not stored")
	},
	"QueueOrder": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		normalOld := createRun(t, s, q.run("a", "c_1", deskrun.PriorityNormal))
		highOld := createRun(t, s, q.run("a", "c_1", deskrun.PriorityHigh))
		assigned := q.run("a", "c_1", deskrun.PriorityHigh)
		assigned.State, assigned.MachineID, assigned.JobID = deskrun.RunAssigned, "m_a", "j_1"
		createRun(t, s, assigned)
		normalNew := createRun(t, s, q.run("a", "c_1", deskrun.PriorityNormal))
		for _, st := range []deskrun.RunState{deskrun.RunLoggingOn, deskrun.RunRunning, deskrun.RunSucceeded,
			deskrun.RunFailed, deskrun.RunCancelled, deskrun.RunTimedOut} {
			r := q.run("a", "c_1", deskrun.PriorityHigh)
			r.State = st
			createRun(t, s, r)
		}
		highNew := createRun(t, s, q.run("a", "c_1", deskrun.PriorityHigh))

		got, err := s.ListQueuedRuns(ctx, store.QueueFilter{})
		require.NoError(t, err)
		require.Equal(t, runIDs([]*deskrun.Run{highOld, highNew, normalOld, normalNew}), runIDs(got),
			"high before normal, then oldest first; only queued runs")
		require.Equal(t, highOld, got[0], "listed runs are complete")

		got, err = s.ListQueuedRuns(ctx, store.QueueFilter{Limit: 3})
		require.NoError(t, err)
		require.Equal(t, runIDs([]*deskrun.Run{highOld, highNew, normalOld}), runIDs(got))

		// Placing a run takes it out of the queue.
		placed := *highOld
		placed.State, placed.MachineID, placed.JobID = deskrun.RunAssigned, "m_a", "j_2"
		ok, err := s.UpdateRun(ctx, &placed)
		require.NoError(t, err)
		require.True(t, ok)
		got, err = s.ListQueuedRuns(ctx, store.QueueFilter{})
		require.NoError(t, err)
		require.Equal(t, runIDs([]*deskrun.Run{highNew, normalOld, normalNew}), runIDs(got))
	},
	"QueueFilter": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		n1 := createRun(t, s, q.run("a", "c_1", deskrun.PriorityNormal))
		h1 := createRun(t, s, q.run("a", "c_2", deskrun.PriorityHigh))
		n2 := createRun(t, s, q.run("a", "c_2", deskrun.PriorityNormal))
		h2 := createRun(t, s, q.run("a", "c_1", deskrun.PriorityHigh))
		n3 := createRun(t, s, q.run("a", "c_3", deskrun.PriorityNormal))
		placed := q.run("a", "c_1", deskrun.PriorityNormal)
		placed.State, placed.MachineID, placed.JobID = deskrun.RunRunning, "m_a", "j_1"
		createRun(t, s, placed)
		n1.QueueDeadline, n3.QueueDeadline = at(-time.Minute), at(-time.Second)
		for _, r := range []*deskrun.Run{n1, n3} {
			ok, err := s.UpdateRun(ctx, r)
			require.NoError(t, err)
			require.True(t, ok)
		}

		for _, tc := range []struct {
			name string
			f    store.QueueFilter
			want []*deskrun.Run
		}{
			{"all", store.QueueFilter{}, []*deskrun.Run{h1, h2, n1, n2, n3}},
			{"high", store.QueueFilter{Priority: deskrun.PriorityHigh}, []*deskrun.Run{h1, h2}},
			{"normal", store.QueueFilter{Priority: deskrun.PriorityNormal}, []*deskrun.Run{n1, n2, n3}},
			{"next page", store.QueueFilter{Priority: deskrun.PriorityNormal, AfterID: n1.ID, Limit: 1}, []*deskrun.Run{n2}},
			{"last page", store.QueueFilter{Priority: deskrun.PriorityNormal, AfterID: n3.ID}, nil},
			{"connections", store.QueueFilter{ConnectionIDs: []string{"c_1", "c_3"}}, []*deskrun.Run{h2, n1, n3}},
			{"deadline passed", store.QueueFilter{DeadlineBy: t0}, []*deskrun.Run{n1, n3}},
			{"deadline at", store.QueueFilter{DeadlineBy: at(-time.Minute)}, []*deskrun.Run{n1}},
			{"everything", store.QueueFilter{Priority: deskrun.PriorityNormal, AfterID: n1.ID, ConnectionIDs: []string{"c_3", "c_1"}, DeadlineBy: t0}, []*deskrun.Run{n3}},
		} {
			got, err := s.ListQueuedRuns(ctx, tc.f)
			require.NoError(t, err, tc.name)
			require.Equal(t, runIDs(tc.want), runIDs(got), tc.name)
		}
	},
	"QueueCountsAndReasons": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		counts := func() map[store.QueueCount]bool {
			cs, err := s.CountQueuedRuns(ctx)
			require.NoError(t, err)
			m := map[store.QueueCount]bool{}
			for _, c := range cs {
				require.False(t, m[c], "one row per connection and reason")
				m[c] = true
			}
			return m
		}
		require.Empty(t, counts(), "an empty queue")

		a1 := createRun(t, s, q.run("f", "c_a", deskrun.PriorityNormal))
		a2 := createRun(t, s, q.run("f", "c_a", deskrun.PriorityHigh))
		a3 := createRun(t, s, q.run("f", "c_a", deskrun.PriorityNormal))
		b1 := createRun(t, s, q.run("f", "c_b", deskrun.PriorityNormal))
		done := q.run("f", "c_a", deskrun.PriorityNormal)
		done.State, done.PlacementReason = deskrun.RunFailed, "old"
		createRun(t, s, done)
		require.Equal(t, map[store.QueueCount]bool{{ConnectionID: "c_a", Count: 3}: true, {ConnectionID: "c_b", Count: 1}: true}, counts())

		// One run already has the reason: it is neither changed nor returned.
		a2.PlacementReason = "machine m is busy"
		ok, err := s.UpdateRun(ctx, a2)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, map[store.QueueCount]bool{{ConnectionID: "c_a", Count: 2}: true, {ConnectionID: "c_a", Reason: "machine m is busy", Count: 1}: true,
			{ConnectionID: "c_b", Count: 1}: true}, counts())
		changed, err := s.SetPlacementReason(ctx, "c_a", "machine m is busy", at(time.Minute))
		require.NoError(t, err)
		require.ElementsMatch(t, []string{a1.ID, a3.ID}, changed)
		for _, r := range []*deskrun.Run{a1, a3} {
			want := *r
			want.PlacementReason, want.UpdatedAt = "machine m is busy", at(time.Minute)
			require.Equal(t, &want, getRun(t, s, r.ID))
		}
		require.Equal(t, a2, getRun(t, s, a2.ID), "a run that had the reason keeps its UpdatedAt")
		require.Equal(t, b1, getRun(t, s, b1.ID), "another connection's runs are not touched")
		require.Equal(t, done, getRun(t, s, done.ID), "nor are runs that are not queued")
		require.Equal(t, map[store.QueueCount]bool{{ConnectionID: "c_a", Reason: "machine m is busy", Count: 3}: true, {ConnectionID: "c_b", Count: 1}: true}, counts())

		changed, err = s.SetPlacementReason(ctx, "c_a", "machine m is busy", at(2*time.Minute))
		require.NoError(t, err)
		require.Empty(t, changed, "nothing differs: nothing is written")
		changed, err = s.SetPlacementReason(ctx, "c_missing", "x", at(2*time.Minute))
		require.NoError(t, err)
		require.Empty(t, changed)
	},
	"NextQueueDeadline": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		next := func(after time.Time) time.Time {
			d, err := s.NextQueueDeadline(ctx, after)
			require.NoError(t, err)
			return d
		}
		require.True(t, next(t0).IsZero(), "no queued run")
		r1 := q.run("f", "c_a", deskrun.PriorityNormal)
		r1.QueueDeadline = at(time.Hour)
		r2 := q.run("f", "c_a", deskrun.PriorityHigh)
		r2.QueueDeadline = at(time.Minute)
		r3 := q.run("f", "c_a", deskrun.PriorityNormal)
		r3.QueueDeadline = at(-time.Minute) // passed
		placed := q.run("f", "c_a", deskrun.PriorityNormal)
		placed.State, placed.QueueDeadline = deskrun.RunAssigned, at(time.Second)
		endless := q.run("f", "c_a", deskrun.PriorityNormal)
		endless.QueueDeadline = time.Time{}
		for _, r := range []*deskrun.Run{r1, r2, r3, placed, endless} {
			createRun(t, s, r)
		}
		require.Equal(t, at(time.Minute), next(t0), "the earliest deadline after now, of queued runs only")
		require.Equal(t, at(time.Hour), next(at(time.Minute)), "strictly after")
		require.True(t, next(at(time.Hour)).IsZero())
		require.Equal(t, at(-time.Minute), next(time.Time{}), "the earliest of all; a zero deadline is none")
		expired, err := s.ListQueuedRuns(ctx, store.QueueFilter{DeadlineBy: t0})
		require.NoError(t, err)
		require.Equal(t, runIDs([]*deskrun.Run{r3}), runIDs(expired), "a run without a deadline never expires")
	},
	"ActiveRunLoad": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		alice := newConnection("c_alice", "alice") // unattended
		bob := newConnection("c_bob", "bob")
		bob.RunMode = deskrun.RunAttended
		alice2 := newConnection("c_alice2", "alice2")
		alice2.Username = alice.Username
		for _, c := range []*deskrun.Connection{alice, bob, alice2} {
			require.NoError(t, s.CreateConnection(ctx, c))
		}
		load, err := s.ActiveRunLoad(ctx)
		require.NoError(t, err)
		require.Empty(t, load.Active)
		require.Empty(t, load.Unattended)

		on := func(connID, machine string, st deskrun.RunState) {
			r := q.run("f", connID, deskrun.PriorityNormal)
			r.State, r.MachineID = st, machine
			if st != deskrun.RunQueued {
				r.JobID = "j_" + r.ID
			}
			createRun(t, s, r)
		}
		on("c_alice", "m_1", deskrun.RunAssigned)
		on("c_alice2", "m_1", deskrun.RunRunning) // the same user through another connection
		on("c_bob", "m_1", deskrun.RunLoggingOn)
		on("c_bob", "m_2", deskrun.RunRunning)
		on("c_gone", "m_2", deskrun.RunRunning) // its connection was deleted
		on("c_alice", "m_3", deskrun.RunSucceeded)
		on("c_alice", "m_3", deskrun.RunFailed)
		on("c_alice", "", deskrun.RunQueued)
		load, err = s.ActiveRunLoad(ctx)
		require.NoError(t, err)
		require.Equal(t, map[string]int{"m_1": 3, "m_2": 2}, load.Active, "assigned, logging on and running runs count; others do not")
		require.Equal(t, map[store.MachineUser]bool{{MachineID: "m_1", Username: alice.Username}: true}, load.Unattended,
			"only unattended connections hold their user")
	},
	"AssignRun": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var (
			q  runSeq
			jq seq
		)
		m := createMachine(t, s, "desk-01")
		r := createRun(t, s, q.run("f", "c_1", deskrun.PriorityNormal))
		r.PlacementReason = "machine desk-01 is busy"
		ok, err := s.UpdateRun(ctx, r)
		require.NoError(t, err)
		require.True(t, ok)
		assign := func(r *deskrun.Run) (*deskrun.Run, *deskrun.Job) {
			j := jq.job(m.ID)
			j.Kind, j.State, j.Payload = "desktop", deskrun.JobPushed, json.RawMessage(`{"run_id":"`+r.ID+`"}`)
			a := *r
			a.State, a.MachineID, a.JobID, a.PlacementReason = deskrun.RunAssigned, m.ID, j.ID, ""
			a.AssignedAt, a.UpdatedAt = at(time.Second), at(time.Second)
			return &a, j
		}

		a, j := assign(r)
		ok, err = s.AssignRun(ctx, a, j)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, a, getRun(t, s, r.ID))
		got, err := s.GetJob(ctx, j.ID)
		require.NoError(t, err)
		require.Equal(t, j, got)
		byJob, err := s.GetRunByJob(ctx, j.ID)
		require.NoError(t, err)
		require.Equal(t, r.ID, byJob.ID)

		// Only a queued run is assigned: not one placed already, nor one
		// cancelled meanwhile. Neither gets a job.
		again, j2 := assign(r)
		ok, err = s.AssignRun(ctx, again, j2)
		require.NoError(t, err)
		require.False(t, ok, "already assigned")
		require.Equal(t, a, getRun(t, s, r.ID))
		_, err = s.GetJob(ctx, j2.ID)
		requireCode(t, err, deskrun.CodeNotFound)

		cancelled := createRun(t, s, q.run("f", "c_1", deskrun.PriorityNormal))
		cancelled.State, cancelled.FinishedAt = deskrun.RunCancelled, at(time.Second)
		ok, err = s.UpdateRun(ctx, cancelled)
		require.NoError(t, err)
		require.True(t, ok)
		late, j3 := assign(cancelled)
		ok, err = s.AssignRun(ctx, late, j3)
		require.NoError(t, err)
		require.False(t, ok, "cancelled")
		require.Equal(t, cancelled, getRun(t, s, cancelled.ID))
		_, err = s.GetJob(ctx, j3.ID)
		requireCode(t, err, deskrun.CodeNotFound)

		// A job that cannot be stored undoes the assignment.
		r2 := createRun(t, s, q.run("f", "c_1", deskrun.PriorityNormal))
		a2, dup := assign(r2)
		dup.ID, a2.JobID = j.ID, j.ID
		_, err = s.AssignRun(ctx, a2, dup)
		requireCode(t, err, deskrun.CodeConflict)
		require.Equal(t, r2, getRun(t, s, r2.ID), "the run is still queued")

		// Inside a transaction, it commits and rolls back with it.
		r3 := createRun(t, s, q.run("f", "c_1", deskrun.PriorityNormal))
		a3, j4 := assign(r3)
		boom := errors.New("boom")
		require.ErrorIs(t, s.InTx(ctx, func(tx store.Tx) error {
			ok, err := tx.AssignRun(ctx, a3, j4)
			require.NoError(t, err)
			require.True(t, ok)
			return boom
		}), boom)
		require.Equal(t, r3, getRun(t, s, r3.ID))
		_, err = s.GetJob(ctx, j4.ID)
		requireCode(t, err, deskrun.CodeNotFound)

		// Refusals.
		missing, j5 := assign(q.run("f", "c_1", deskrun.PriorityNormal))
		_, err = s.AssignRun(ctx, missing, j5)
		requireCode(t, err, deskrun.CodeNotFound)
		for name, edit := range map[string]func(*deskrun.Run, *deskrun.Job){
			"not assigned":  func(r *deskrun.Run, _ *deskrun.Job) { r.State = deskrun.RunRunning },
			"other job":     func(r *deskrun.Run, _ *deskrun.Job) { r.JobID = "j_other" },
			"other machine": func(_ *deskrun.Run, j *deskrun.Job) { j.MachineID = "m_other" },
		} {
			bad, bj := assign(r2)
			edit(bad, bj)
			_, err := s.AssignRun(ctx, bad, bj)
			requireCode(t, err, deskrun.CodeInvalid)
			require.Equal(t, r2, getRun(t, s, r2.ID), name)
		}
	},
	"QueueDefaultLimit": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		require.NoError(t, s.InTx(ctx, func(tx store.Tx) error {
			for range store.DefaultJobLimit + 5 {
				if err := tx.CreateRun(ctx, q.run("a", "c_1", deskrun.PriorityNormal)); err != nil {
					return err
				}
			}
			return nil
		}))
		for _, limit := range []int{0, -1} {
			got, err := s.ListQueuedRuns(ctx, store.QueueFilter{Limit: limit})
			require.NoError(t, err)
			require.Len(t, got, store.DefaultJobLimit)
		}
	},
	"UpdateRun": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		r := createRun(t, s, q.run("invoices", "c_1", deskrun.PriorityNormal))

		// The run waits, then is placed: mutable fields are written.
		waiting := *r
		waiting.PlacementReason, waiting.UpdatedAt, waiting.QueueDeadline = "every machine is busy", at(time.Second), at(2*time.Hour)
		ok, err := s.UpdateRun(ctx, &waiting)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, &waiting, getRun(t, s, r.ID))

		// Immutable fields are not, whatever the caller passes.
		done := finished(&waiting, deskrun.RunFailed)
		edit := *done
		edit.Flow, edit.Version, edit.Digest, edit.ConnectionID = "other", 9, "sha256:other", "c_other"
		edit.Priority, edit.Inputs, edit.Screenshot, edit.CreatedAt = deskrun.PriorityHigh, json.RawMessage(`{}`), false, at(time.Hour)
		ok, err = s.UpdateRun(ctx, &edit)
		require.NoError(t, err)
		require.True(t, ok)
		got := getRun(t, s, r.ID)
		require.Equal(t, done, got, "flow, version, digest, connection, priority, inputs, screenshot and creation time are kept")

		got, err = s.GetRunByJob(ctx, done.JobID)
		require.NoError(t, err)
		require.Equal(t, r.ID, got.ID)
	},
	"UpdateRunRefusesTerminal": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		for _, st := range []deskrun.RunState{deskrun.RunSucceeded, deskrun.RunFailed, deskrun.RunCancelled, deskrun.RunTimedOut} {
			r := createRun(t, s, q.run("invoices", "c_1", deskrun.PriorityNormal))
			done := finished(r, st)
			ok, err := s.UpdateRun(ctx, done)
			require.NoError(t, err, st)
			require.True(t, ok, st)

			late := finished(r, deskrun.RunCancelled)
			late.State, late.JobID, late.ExitCode, late.Outputs = deskrun.RunRunning, "j_late", nil, nil
			late.Error, late.FinishedAt = nil, at(time.Hour)
			ok, err = s.UpdateRun(ctx, late)
			require.NoError(t, err, st)
			require.False(t, ok, "%s is terminal", st)
			require.Equal(t, done, getRun(t, s, r.ID), "a refused update changes nothing (%s)", st)
		}

		// A run created terminal is refused too.
		r := q.run("invoices", "c_1", deskrun.PriorityNormal)
		r.State = deskrun.RunCancelled
		createRun(t, s, r)
		again := *r
		again.State = deskrun.RunQueued
		ok, err := s.UpdateRun(ctx, &again)
		require.NoError(t, err)
		require.False(t, ok)
	},
	"UpdateRunRace": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		r := createRun(t, s, q.run("invoices", "c_1", deskrun.PriorityNormal))
		states := []deskrun.RunState{deskrun.RunSucceeded, deskrun.RunFailed, deskrun.RunCancelled, deskrun.RunTimedOut,
			deskrun.RunSucceeded, deskrun.RunFailed, deskrun.RunCancelled, deskrun.RunTimedOut}
		wins := make(chan deskrun.RunState, len(states))
		var wg sync.WaitGroup
		for _, st := range states {
			wg.Go(func() {
				ok, err := s.UpdateRun(ctx, finished(r, st))
				if err != nil {
					t.Error(err)
				}
				if ok {
					wins <- st
				}
			})
		}
		wg.Wait()
		close(wins)
		var won []deskrun.RunState
		for st := range wins {
			won = append(won, st)
		}
		require.Len(t, won, 1, "exactly one finisher wins")
		require.Equal(t, won[0], getRun(t, s, r.ID).State)
	},
	"ListRuns": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		// Oldest first.
		a1 := createRun(t, s, q.run("a", "c_1", deskrun.PriorityNormal))
		b1 := q.run("b", "c_2", deskrun.PriorityHigh)
		b1.State, b1.MachineID, b1.JobID = deskrun.RunRunning, "m_1", "j_b1"
		createRun(t, s, b1)
		a2 := q.run("a", "c_2", deskrun.PriorityNormal)
		a2.State, a2.MachineID, a2.JobID = deskrun.RunSucceeded, "m_2", "j_a2"
		createRun(t, s, a2)
		a3 := q.run("a", "c_1", deskrun.PriorityNormal)
		a3.State, a3.MachineID, a3.JobID = deskrun.RunFailed, "m_1", "j_a3"
		createRun(t, s, a3)

		for _, tc := range []struct {
			name string
			f    store.RunFilter
			want []*deskrun.Run
		}{
			{"all newest first", store.RunFilter{}, []*deskrun.Run{a3, a2, b1, a1}},
			{"flow", store.RunFilter{Flow: "a"}, []*deskrun.Run{a3, a2, a1}},
			{"machine", store.RunFilter{MachineID: "m_1"}, []*deskrun.Run{a3, b1}},
			{"connection", store.RunFilter{ConnectionID: "c_2"}, []*deskrun.Run{a2, b1}},
			{"one state", store.RunFilter{States: []deskrun.RunState{deskrun.RunQueued}}, []*deskrun.Run{a1}},
			{"states", store.RunFilter{States: []deskrun.RunState{deskrun.RunSucceeded, deskrun.RunFailed}}, []*deskrun.Run{a3, a2}},
			{"flow and connection", store.RunFilter{Flow: "a", ConnectionID: "c_1"}, []*deskrun.Run{a3, a1}},
			{"every filter", store.RunFilter{Flow: "a", MachineID: "m_1", ConnectionID: "c_1",
				States: []deskrun.RunState{deskrun.RunFailed}}, []*deskrun.Run{a3}},
			{"limit", store.RunFilter{Limit: 2}, []*deskrun.Run{a3, a2}},
			{"flow and limit", store.RunFilter{Flow: "a", Limit: 1}, []*deskrun.Run{a3}},
			{"no match", store.RunFilter{Flow: "missing"}, nil},
		} {
			got, err := s.ListRuns(ctx, tc.f)
			require.NoError(t, err, tc.name)
			require.Equal(t, runIDs(tc.want), runIDs(got), tc.name)
			if tc.f.Limit == 0 {
				n, err := s.CountRuns(ctx, tc.f)
				require.NoError(t, err, tc.name)
				require.Equal(t, len(tc.want), n, "CountRuns: "+tc.name)
			}
		}
		n, err := s.CountRuns(ctx, store.RunFilter{Limit: 1})
		require.NoError(t, err)
		require.Equal(t, 4, n, "CountRuns ignores Limit")
		got, err := s.ListRuns(ctx, store.RunFilter{MachineID: "m_1", Flow: "b"})
		require.NoError(t, err)
		require.Equal(t, []*deskrun.Run{b1}, got, "listed runs are complete")
	},
	"ListRunsDefaultLimit": func(t *testing.T, s store.Store) {
		var q runSeq
		requireDefaultLimit(t, s, func(tx store.Tx) (string, error) {
			r := q.run("a", "c_1", deskrun.PriorityNormal)
			return r.ID, tx.CreateRun(t.Context(), r)
		}, func(limit int) ([]string, error) {
			rs, err := s.ListRuns(t.Context(), store.RunFilter{Limit: limit})
			return runIDs(rs), err
		})
	},
	"OutliveConnectionAndMachine": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		c := createConnection(t, s, "c_1", "build")
		m := createMachine(t, s, "desk-01")
		r := q.run("invoices", c.ID, deskrun.PriorityNormal)
		r.State, r.MachineID = deskrun.RunRunning, m.ID
		createRun(t, s, r)
		require.NoError(t, s.AppendRunLog(ctx, r.ID, []deskrun.LogChunk{{Seq: 1, Stream: "stdout", Data: []byte("hi"), At: t0}}))
		require.NoError(t, s.SaveRunScreenshot(ctx, r.ID, []byte("png")))
		r.HasScreenshot = true // derived by the store from the saved screenshot

		require.NoError(t, s.DeleteConnection(ctx, c.ID))
		require.NoError(t, s.DeleteMachine(ctx, m.ID))

		require.Equal(t, r, getRun(t, s, r.ID), "a run outlives its connection and machine")
		got, err := s.ListRuns(ctx, store.RunFilter{ConnectionID: c.ID})
		require.NoError(t, err)
		require.Equal(t, []*deskrun.Run{r}, got)
		log, err := s.ReadRunLog(ctx, r.ID, 0, 0)
		require.NoError(t, err)
		require.Len(t, log, 1)
		png, err := s.GetRunScreenshot(ctx, r.ID)
		require.NoError(t, err)
		require.Equal(t, []byte("png"), png)
	},
	"Screenshot": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		r := createRun(t, s, q.run("invoices", "c_1", deskrun.PriorityNormal))
		other := createRun(t, s, q.run("invoices", "c_1", deskrun.PriorityNormal))

		_, err := s.GetRunScreenshot(ctx, r.ID)
		requireCode(t, err, deskrun.CodeNotFound)
		require.ErrorContains(t, err, r.ID)

		got0, err := s.GetRun(ctx, r.ID)
		require.NoError(t, err)
		require.False(t, got0.HasScreenshot)

		first := append([]byte("\x89PNG\r\n\x1a\n"), bytes.Repeat([]byte{0, 255}, 1000)...)
		require.NoError(t, s.SaveRunScreenshot(ctx, r.ID, first))
		withShot, err := s.GetRun(ctx, r.ID)
		require.NoError(t, err)
		require.True(t, withShot.HasScreenshot, "GetRun derives HasScreenshot")
		listed, err := s.ListRuns(ctx, store.RunFilter{Flow: "invoices"})
		require.NoError(t, err)
		for _, lr := range listed {
			require.Equal(t, lr.ID == r.ID, lr.HasScreenshot, "ListRuns derives HasScreenshot")
		}
		got, err := s.GetRunScreenshot(ctx, r.ID)
		require.NoError(t, err)
		require.Equal(t, first, got)

		second := []byte("\x89PNG\r\n\x1a\nsecond")
		require.NoError(t, s.SaveRunScreenshot(ctx, r.ID, second), "saving again replaces")
		got, err = s.GetRunScreenshot(ctx, r.ID)
		require.NoError(t, err)
		require.Equal(t, second, got)

		_, err = s.GetRunScreenshot(ctx, other.ID)
		requireCode(t, err, deskrun.CodeNotFound)

		requireCode(t, s.SaveRunScreenshot(ctx, r.ID, nil), deskrun.CodeInvalid)
		got, err = s.GetRunScreenshot(ctx, r.ID)
		require.NoError(t, err)
		require.Equal(t, second, got, "a refused screenshot keeps the stored one")
	},
}

// chunks makes log chunks with the given seqs, their data naming them.
func chunks(stream string, seqs ...int64) []deskrun.LogChunk {
	var cs []deskrun.LogChunk
	for _, n := range seqs {
		cs = append(cs, deskrun.LogChunk{Seq: n, Stream: stream, Data: fmt.Appendf(nil, "%s line %d\n", stream, n),
			At: at(time.Duration(n) * time.Millisecond)})
	}
	return cs
}

func seqs(cs []deskrun.LogChunk) []int64 {
	out := make([]int64, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.Seq)
	}
	return out
}

var runLogTests = map[string]func(t *testing.T, s store.Store){
	"AppendRead": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		r := createRun(t, s, q.run("invoices", "c_1", deskrun.PriorityNormal))
		other := createRun(t, s, q.run("invoices", "c_1", deskrun.PriorityNormal))

		got, err := s.ReadRunLog(ctx, r.ID, 0, 0)
		require.NoError(t, err)
		require.Empty(t, got, "a run without output has an empty log")
		require.NoError(t, s.AppendRunLog(ctx, r.ID, nil), "nothing to append is not an error")

		// Out of order, both streams, in two batches.
		require.NoError(t, s.AppendRunLog(ctx, r.ID, append(chunks("stdout", 3, 1), chunks("stderr", 2)...)))
		require.NoError(t, s.AppendRunLog(ctx, r.ID, chunks("stdout", 5, 4)))
		require.NoError(t, s.AppendRunLog(ctx, other.ID, chunks("stdout", 1, 2)))

		got, err = s.ReadRunLog(ctx, r.ID, 0, 0)
		require.NoError(t, err)
		want := append(append(chunks("stdout", 1), chunks("stderr", 2)...), chunks("stdout", 3, 4, 5)...)
		require.Equal(t, want, got, "in seq order, complete")

		// Paging with afterSeq.
		for _, tc := range []struct {
			after int64
			limit int
			want  []int64
		}{
			{0, 2, []int64{1, 2}},
			{2, 2, []int64{3, 4}},
			{4, 2, []int64{5}},
			{5, 2, []int64{}},
			{-1, 0, []int64{1, 2, 3, 4, 5}},
			{3, -1, []int64{4, 5}},
		} {
			got, err := s.ReadRunLog(ctx, r.ID, tc.after, tc.limit)
			require.NoError(t, err)
			require.Equal(t, tc.want, seqs(got), "after %d limit %d", tc.after, tc.limit)
		}
		got, err = s.ReadRunLog(ctx, other.ID, 0, 0)
		require.NoError(t, err)
		require.Equal(t, chunks("stdout", 1, 2), got, "each run has its own seqs")
	},
	"AppendIsIdempotent": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		r := createRun(t, s, q.run("invoices", "c_1", deskrun.PriorityNormal))
		require.NoError(t, s.AppendRunLog(ctx, r.ID, chunks("stdout", 1, 2)))

		// A batch resent after a reconnect, with a new chunk: the known
		// seqs are kept as first stored, even if the resend differs.
		resent := chunks("stdout", 1, 2, 3)
		resent[0].Data, resent[1].Stream = []byte("changed"), "stderr"
		require.NoError(t, s.AppendRunLog(ctx, r.ID, resent))
		// A batch that repeats a seq within itself.
		require.NoError(t, s.AppendRunLog(ctx, r.ID, append(chunks("stdout", 4), chunks("stderr", 4)...)))

		got, err := s.ReadRunLog(ctx, r.ID, 0, 0)
		require.NoError(t, err)
		require.Equal(t, chunks("stdout", 1, 2, 3, 4), got)
	},
	"DefaultLimit": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		r := createRun(t, s, q.run("invoices", "c_1", deskrun.PriorityNormal))
		var all []int64
		for n := range int64(1005) {
			all = append(all, n+1)
		}
		require.NoError(t, s.AppendRunLog(ctx, r.ID, chunks("stdout", all...)))
		got, err := s.ReadRunLog(ctx, r.ID, 0, 0)
		require.NoError(t, err)
		require.Equal(t, all[:1000], seqs(got), "the default page is 1000 chunks")
		got, err = s.ReadRunLog(ctx, r.ID, 1000, 0)
		require.NoError(t, err)
		require.Equal(t, all[1000:], seqs(got))
	},
	"LargeChunk": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		r := createRun(t, s, q.run("invoices", "c_1", deskrun.PriorityNormal))
		data := make([]byte, 1<<20)
		_, _ = rand.Read(data)
		data[0], data[len(data)-1] = 0, 0 // NUL bytes at the edges survive too
		chunk := deskrun.LogChunk{Seq: 1, Stream: "stdout", Data: data, At: t0}
		require.NoError(t, s.AppendRunLog(ctx, r.ID, []deskrun.LogChunk{chunk}))
		got, err := s.ReadRunLog(ctx, r.ID, 0, 0)
		require.NoError(t, err)
		require.Len(t, got, 1)
		require.True(t, bytes.Equal(data, got[0].Data), "a 1 MB chunk round-trips byte-exact")
		require.Equal(t, chunk, got[0])
	},
	"ZeroValues": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		r := createRun(t, s, q.run("invoices", "c_1", deskrun.PriorityNormal))
		bare := deskrun.LogChunk{Seq: 7}
		require.NoError(t, s.AppendRunLog(ctx, r.ID, []deskrun.LogChunk{bare}))
		got, err := s.ReadRunLog(ctx, r.ID, 0, 0)
		require.NoError(t, err)
		require.Equal(t, []deskrun.LogChunk{bare}, got, "empty data and zero time read back as nil and zero")
	},
	"BatchIsAtomic": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q runSeq
		r := createRun(t, s, q.run("invoices", "c_1", deskrun.PriorityNormal))

		// A caller's rollback undoes the whole batch.
		err := s.InTx(ctx, func(tx store.Tx) error {
			if err := tx.AppendRunLog(ctx, r.ID, chunks("stdout", 1, 2)); err != nil {
				return err
			}
			got, err := tx.ReadRunLog(ctx, r.ID, 0, 0)
			require.NoError(t, err)
			require.Len(t, got, 2, "the transaction sees its own chunks")
			return errBoom
		})
		require.ErrorIs(t, err, errBoom)
		got, err := s.ReadRunLog(ctx, r.ID, 0, 0)
		require.NoError(t, err)
		require.Empty(t, got)

		// Inside a transaction, a failed append (missing run) undoes only itself.
		require.NoError(t, s.InTx(ctx, func(tx store.Tx) error {
			requireCode(t, tx.AppendRunLog(ctx, "r_missing", chunks("stdout", 1)), deskrun.CodeNotFound)
			return tx.AppendRunLog(ctx, r.ID, chunks("stdout", 1))
		}))
		got, err = s.ReadRunLog(ctx, r.ID, 0, 0)
		require.NoError(t, err)
		require.Equal(t, chunks("stdout", 1), got)
	},
}
