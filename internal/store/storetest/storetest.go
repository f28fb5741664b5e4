// Package storetest is the conformance suite of store.Store: every backend
// runs it, so SQLite and PostgreSQL give the same answers. A store method
// is not done until this suite covers it.
package storetest

import (
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

// Run runs the suite. open must return a fresh, migrated, empty store and
// close it when t ends (closing it twice must be harmless). Subtests run in
// parallel, each on its own store.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	groups := []struct {
		name  string
		tests map[string]func(t *testing.T, s store.Store)
	}{
		{"Store", storeTests},
		{"Machines", machineTests},
		{"Tokens", tokenTests},
		{"Jobs", jobTests},
		{"InTx", txTests},
		{"Connections", connectionTests},
		{"Audit", auditTests},
		{"ConnectionsInTx", connectionTxTests},
		{"DesktopFlows", desktopFlowTests},
		{"Runs", runTests},
		{"RunLogs", runLogTests},
		{"Flows", flowTests},
		{"Users", userTests},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			t.Parallel()
			for name, test := range g.tests {
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					test(t, open(t))
				})
			}
		})
	}
}

// t0 is the suite's "now". Times are whole UTC values so that stored and
// read structs compare equal with require.Equal.
var t0 = time.Date(2025, 3, 14, 15, 9, 26, 535897000, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func requireCode(t *testing.T, err error, code string) {
	t.Helper()
	require.Error(t, err)
	var de *deskrun.Error
	require.True(t, errors.As(err, &de), "want a *deskrun.Error with code %s, got %T: %v", code, err, err)
	require.Equal(t, code, de.Code, "error: %v", err)
}

func newMachine(name string) *deskrun.Machine {
	return &deskrun.Machine{
		ID:              deskrun.NewID("m", t0),
		Name:            name,
		OS:              "linux",
		Arch:            "amd64",
		Kernel:          "6.1.0-18-amd64",
		AgentVersion:    "0.1.0",
		ProtocolVersion: 1,
		JoinState:       deskrun.JoinSSSD,
		Domain:          "test.example",
		Slots:           2,
		Sessions:        "exclusive",
		SigningKey:      []byte("signing-key-32-bytes-long-000000"),
		SealKey:         []byte{0, 1, 2, 3, 255},
		SealKeyID:       "sk1",
		State:           deskrun.MachineOnline,
		LastSeen:        at(time.Minute),
		OfflineReason:   "",
		CreatedAt:       t0,
	}
}

func createMachine(t *testing.T, s store.Tx, name string) *deskrun.Machine {
	t.Helper()
	m := newMachine(name)
	require.NoError(t, s.CreateMachine(t.Context(), m))
	return m
}

// createMachineWithID is createMachine with a given id.
func createMachineWithID(t *testing.T, s store.Tx, id, name string) *deskrun.Machine {
	t.Helper()
	m := newMachine(name)
	m.ID = id
	require.NoError(t, s.CreateMachine(t.Context(), m))
	return m
}

// seq makes job ids and creation times one millisecond apart, so that id
// order is creation order whatever NewID's random bits.
type seq struct{ n int }

func (q *seq) job(machineID string) *deskrun.Job {
	q.n++
	created := at(time.Duration(q.n) * time.Millisecond)
	return &deskrun.Job{
		ID:        deskrun.NewID("j", created),
		MachineID: machineID,
		Kind:      deskrun.JobNoop,
		State:     deskrun.JobQueued,
		CreatedAt: created,
		UpdatedAt: created,
	}
}

func createJob(t *testing.T, s store.Tx, j *deskrun.Job) *deskrun.Job {
	t.Helper()
	require.NoError(t, s.CreateJob(t.Context(), j))
	return j
}

func ids[T any](xs []*T, id func(*T) string) []string {
	out := make([]string, 0, len(xs))
	for _, x := range xs {
		out = append(out, id(x))
	}
	return out
}

func jobIDs(js []*deskrun.Job) []string { return ids(js, func(j *deskrun.Job) string { return j.ID }) }

// requireDefaultLimit creates store.DefaultJobLimit+5 rows in one
// transaction with create, which returns the new row's id, and checks that
// list (the ids, newest first) returns the newest store.DefaultJobLimit for
// a limit of 0 or less and every row for a larger limit.
func requireDefaultLimit(t *testing.T, s store.Store, create func(tx store.Tx) (string, error), list func(limit int) ([]string, error)) {
	t.Helper()
	var newest string
	require.NoError(t, s.InTx(t.Context(), func(tx store.Tx) error {
		for range store.DefaultJobLimit + 5 {
			id, err := create(tx)
			if err != nil {
				return err
			}
			newest = id
		}
		return nil
	}))
	for _, limit := range []int{0, -1} {
		got, err := list(limit)
		require.NoError(t, err)
		require.Len(t, got, store.DefaultJobLimit)
		require.Equal(t, newest, got[0])
	}
	got, err := list(store.DefaultJobLimit + 10)
	require.NoError(t, err)
	require.Len(t, got, store.DefaultJobLimit+5)
}

var storeTests = map[string]func(t *testing.T, s store.Store){
	"Ping": func(t *testing.T, s store.Store) {
		require.NoError(t, s.Ping(t.Context()))
	},
	"MigrateUpToDate": func(t *testing.T, s store.Store) {
		applied, err := s.Migrate(t.Context())
		require.NoError(t, err)
		require.Empty(t, applied, "a migrated store has nothing left to apply")
	},
	"Close": func(t *testing.T, s store.Store) {
		require.NoError(t, s.Close())
		require.Error(t, s.Ping(t.Context()))
		require.NoError(t, s.Close(), "closing twice is harmless")
	},
}

var machineTests = map[string]func(t *testing.T, s store.Store){
	"CreateGet": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		m := createMachine(t, s, "desk-01")

		got, err := s.GetMachine(ctx, m.ID)
		require.NoError(t, err)
		require.Equal(t, m, got)

		got, err = s.GetMachineByName(ctx, "desk-01")
		require.NoError(t, err)
		require.Equal(t, m, got)
	},
	"ZeroValues": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		m := &deskrun.Machine{ID: "m_zero", Name: "bare", State: deskrun.MachineOffline}
		require.NoError(t, s.CreateMachine(ctx, m))
		got, err := s.GetMachine(ctx, m.ID)
		require.NoError(t, err)
		want := *m
		want.Sessions = "shared"
		require.Equal(t, &want, got, "nil keys and zero times read back as nil and zero, no session policy as shared")
	},
	"NotFound": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		_, err := s.GetMachine(ctx, "m_missing")
		requireCode(t, err, deskrun.CodeNotFound)
		require.ErrorContains(t, err, `machine "m_missing" not found`)

		_, err = s.GetMachineByName(ctx, "nobody")
		requireCode(t, err, deskrun.CodeNotFound)
		require.ErrorContains(t, err, `"nobody"`)
	},
	"DuplicateName": func(t *testing.T, s store.Store) {
		createMachine(t, s, "desk-01")
		err := s.CreateMachine(t.Context(), newMachine("desk-01")) // same id too
		requireCode(t, err, deskrun.CodeConflict)

		m := newMachine("desk-01")
		m.ID = "m_other"
		err = s.CreateMachine(t.Context(), m)
		requireCode(t, err, deskrun.CodeConflict)
		require.ErrorContains(t, err, `a machine named "desk-01" already exists`)
	},
	"DuplicateID": func(t *testing.T, s store.Store) {
		m := createMachine(t, s, "desk-01")
		other := newMachine("desk-02")
		other.ID = m.ID
		err := s.CreateMachine(t.Context(), other)
		requireCode(t, err, deskrun.CodeConflict)
		require.ErrorContains(t, err, m.ID)
	},
	"ListByName": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		ms, err := s.ListMachines(ctx)
		require.NoError(t, err)
		require.Empty(t, ms)

		for i, name := range []string{"charlie", "alpha", "bravo"} {
			m := newMachine(name)
			m.ID = fmt.Sprintf("m_%d", i)
			require.NoError(t, s.CreateMachine(ctx, m))
		}
		ms, err = s.ListMachines(ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"alpha", "bravo", "charlie"},
			ids(ms, func(m *deskrun.Machine) string { return m.Name }))
		require.Equal(t, "m_1", ms[0].ID)
	},
	"UpdateMachineInfo": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		m := createMachine(t, s, "desk-01")

		hello := &deskrun.Machine{
			ID: m.ID, Name: "ignored", OS: "linux", Arch: "arm64", Kernel: "6.12.0",
			AgentVersion: "0.2.0", ProtocolVersion: 2, JoinState: deskrun.JoinWinbind,
			Domain: "corp.example", Slots: 4,
		}
		require.NoError(t, s.UpdateMachineInfo(ctx, hello))

		want := *m
		want.Arch, want.Kernel, want.AgentVersion, want.ProtocolVersion = "arm64", "6.12.0", "0.2.0", 2
		want.JoinState, want.Domain, want.Slots = deskrun.JoinWinbind, "corp.example", 4
		got, err := s.GetMachine(ctx, m.ID)
		require.NoError(t, err)
		require.Equal(t, &want, got, "name, keys, presence and creation time are kept")

		hello.ID = "m_missing"
		requireCode(t, s.UpdateMachineInfo(ctx, hello), deskrun.CodeNotFound)
	},
	"SetMachineDoctor": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		m := createMachine(t, s, "desk-01")
		got, err := s.GetMachine(ctx, m.ID)
		require.NoError(t, err)
		require.Nil(t, got.Doctor, "no report until the agent sends one")

		r := &deskrun.DoctorReport{At: at(time.Minute), Checks: []deskrun.DoctorCheck{
			{Name: "root", Status: deskrun.DoctorPass, Detail: "running as root, as the agent does"},
			{Name: "pam service batch", Status: deskrun.DoctorFail, Detail: "/etc/pam.d/deskrun-batch missing", Fix: "deskrun agent install-pam"},
			{Name: "clock skew", Status: deskrun.DoctorSkip, Detail: "skipped: no domain configured"},
		}}
		require.NoError(t, s.SetMachineDoctor(ctx, m.ID, r))
		want := *m
		want.Doctor = r
		got, err = s.GetMachine(ctx, m.ID)
		require.NoError(t, err)
		require.Equal(t, &want, got, "only the report changes")
		ms, err := s.ListMachines(ctx)
		require.NoError(t, err)
		require.Len(t, ms, 1)
		require.Equal(t, r, ms[0].Doctor)

		// The next report replaces it; the agent's hello keeps it.
		r2 := &deskrun.DoctorReport{At: at(time.Hour), Checks: []deskrun.DoctorCheck{{Name: "root", Status: deskrun.DoctorPass, Detail: "ok"}}}
		require.NoError(t, s.SetMachineDoctor(ctx, m.ID, r2))
		hello := *m
		hello.Slots = 3
		require.NoError(t, s.UpdateMachineInfo(ctx, &hello))
		got, err = s.GetMachineByName(ctx, "desk-01")
		require.NoError(t, err)
		require.Equal(t, r2, got.Doctor)
		require.Equal(t, 3, got.Slots)

		require.NoError(t, s.SetMachineDoctor(ctx, m.ID, nil))
		got, err = s.GetMachine(ctx, m.ID)
		require.NoError(t, err)
		require.Nil(t, got.Doctor)

		requireCode(t, s.SetMachineDoctor(ctx, "m_missing", r), deskrun.CodeNotFound)
	},
	"SetMachineSessions": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		m := createMachine(t, s, "desk-01")
		require.NoError(t, s.SetMachineSessions(ctx, m.ID, "shared"))
		want := *m
		want.Sessions = "shared"
		got, err := s.GetMachine(ctx, m.ID)
		require.NoError(t, err)
		require.Equal(t, &want, got, "only the session policy changes")

		// The agent's hello, which carries no policy, keeps the admin's.
		require.NoError(t, s.SetMachineSessions(ctx, m.ID, "exclusive"))
		hello := *m
		hello.Sessions, hello.Slots = "", 8
		require.NoError(t, s.UpdateMachineInfo(ctx, &hello))
		got, err = s.GetMachine(ctx, m.ID)
		require.NoError(t, err)
		require.Equal(t, "exclusive", got.Sessions)
		require.Equal(t, 8, got.Slots)

		requireCode(t, s.SetMachineSessions(ctx, m.ID, "private"), deskrun.CodeInvalid)
		requireCode(t, s.SetMachineSessions(ctx, m.ID, ""), deskrun.CodeInvalid)
		requireCode(t, s.CreateMachine(ctx, &deskrun.Machine{ID: "m_bad", Name: "bad", Sessions: "private"}), deskrun.CodeInvalid)
		got, err = s.GetMachine(ctx, m.ID)
		require.NoError(t, err)
		require.Equal(t, "exclusive", got.Sessions, "a refused policy changes nothing")

		requireCode(t, s.SetMachineSessions(ctx, "m_missing", "shared"), deskrun.CodeNotFound)
	},
	"SetMachinePresence": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		m := createMachine(t, s, "desk-01")

		require.NoError(t, s.SetMachinePresence(ctx, m.ID, deskrun.MachineOffline, at(time.Hour), "connection lost"))
		got, err := s.GetMachine(ctx, m.ID)
		require.NoError(t, err)
		require.Equal(t, deskrun.MachineOffline, got.State)
		require.Equal(t, at(time.Hour), got.LastSeen)
		require.Equal(t, "connection lost", got.OfflineReason)

		require.NoError(t, s.SetMachinePresence(ctx, m.ID, deskrun.MachineOnline, at(2*time.Hour), ""))
		got, err = s.GetMachine(ctx, m.ID)
		require.NoError(t, err)
		require.Equal(t, deskrun.MachineOnline, got.State)
		require.Equal(t, at(2*time.Hour), got.LastSeen)
		require.Empty(t, got.OfflineReason)

		requireCode(t, s.SetMachinePresence(ctx, "m_missing", deskrun.MachineOnline, t0, ""), deskrun.CodeNotFound)
	},
	"MarkAllMachinesOffline": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		on1 := createMachine(t, s, "on-1")
		on2 := createMachineWithID(t, s, "m_on2", "on-2")
		off := newMachine("off")
		off.ID, off.State, off.LastSeen, off.OfflineReason = "m_off", deskrun.MachineOffline, at(-time.Hour), "agent stopped"
		require.NoError(t, s.CreateMachine(ctx, off))

		require.NoError(t, s.MarkAllMachinesOffline(ctx, at(time.Hour), "server restarted"))

		for _, id := range []string{on1.ID, on2.ID} {
			got, err := s.GetMachine(ctx, id)
			require.NoError(t, err)
			require.Equal(t, deskrun.MachineOffline, got.State)
			require.Equal(t, "server restarted", got.OfflineReason)
			require.Equal(t, at(time.Hour), got.LastSeen)
		}
		got, err := s.GetMachine(ctx, off.ID)
		require.NoError(t, err)
		require.Equal(t, off, got, "an offline machine keeps its reason and last seen")

		require.NoError(t, s.MarkAllMachinesOffline(ctx, at(2*time.Hour), "again"), "nothing online is not an error")
	},
	"DeleteMachine": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q seq
		m := createMachine(t, s, "desk-01")
		other := createMachineWithID(t, s, "m_other", "desk-02")
		gone := createJob(t, s, q.job(m.ID))
		kept := createJob(t, s, q.job(other.ID))

		require.NoError(t, s.DeleteMachine(ctx, m.ID))
		_, err := s.GetMachine(ctx, m.ID)
		requireCode(t, err, deskrun.CodeNotFound)
		_, err = s.GetJob(ctx, gone.ID)
		requireCode(t, err, deskrun.CodeNotFound)
		_, err = s.GetJob(ctx, kept.ID)
		require.NoError(t, err, "other machines' jobs stay")

		requireCode(t, s.DeleteMachine(ctx, m.ID), deskrun.CodeNotFound)

		// The name is free again.
		require.NoError(t, s.CreateMachine(ctx, newMachine("desk-01")))
	},
}

func newToken(id string, kind deskrun.TokenKind) *deskrun.Token {
	t := &deskrun.Token{
		ID:        id,
		Kind:      kind,
		Name:      "token " + id,
		Hash:      []byte("sha256-of-" + id),
		CreatedAt: t0,
	}
	if kind == deskrun.TokenAPI {
		t.Role = deskrun.RoleMaker
	} else {
		t.UsesLeft = 1
	}
	return t
}

var tokenTests = map[string]func(t *testing.T, s store.Store){
	"CreateGet": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		api := newToken("t_api", deskrun.TokenAPI)
		api.ExpiresAt, api.LastUsed = at(24*time.Hour), at(time.Minute)
		enroll := newToken("t_enroll", deskrun.TokenEnrollment)
		enroll.UsesLeft, enroll.RevokedAt = 3, at(time.Hour)
		for _, tok := range []*deskrun.Token{api, enroll} {
			require.NoError(t, s.CreateToken(ctx, tok))
			got, err := s.GetToken(ctx, tok.ID)
			require.NoError(t, err)
			require.Equal(t, tok, got)
		}

		_, err := s.GetToken(ctx, "t_missing")
		requireCode(t, err, deskrun.CodeNotFound)
		require.ErrorContains(t, err, `token "t_missing" not found`)

		err = s.CreateToken(ctx, newToken("t_api", deskrun.TokenAPI))
		requireCode(t, err, deskrun.CodeConflict)
	},
	"ListTokens": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		all, err := s.ListTokens(ctx, "")
		require.NoError(t, err)
		require.Empty(t, all)

		for i, k := range []deskrun.TokenKind{deskrun.TokenEnrollment, deskrun.TokenAPI, deskrun.TokenEnrollment, deskrun.TokenAPI} {
			tok := newToken(fmt.Sprintf("t_%d", i), k)
			tok.CreatedAt = at(-time.Duration(i) * time.Minute) // later ids are older
			require.NoError(t, s.CreateToken(ctx, tok))
		}
		tokID := func(tok *deskrun.Token) string { return tok.ID }

		api, err := s.ListTokens(ctx, deskrun.TokenAPI)
		require.NoError(t, err)
		require.Equal(t, []string{"t_3", "t_1"}, ids(api, tokID), "oldest first")

		enroll, err := s.ListTokens(ctx, deskrun.TokenEnrollment)
		require.NoError(t, err)
		require.Equal(t, []string{"t_2", "t_0"}, ids(enroll, tokID))

		all, err = s.ListTokens(ctx, "")
		require.NoError(t, err)
		require.Equal(t, []string{"t_3", "t_2", "t_1", "t_0"}, ids(all, tokID))
	},
	"RevokeToken": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		require.NoError(t, s.CreateToken(ctx, newToken("t_api", deskrun.TokenAPI)))

		require.NoError(t, s.RevokeToken(ctx, "t_api", at(time.Hour)))
		got, err := s.GetToken(ctx, "t_api")
		require.NoError(t, err)
		require.Equal(t, at(time.Hour), got.RevokedAt)
		require.False(t, got.Active(at(time.Hour)))

		require.NoError(t, s.RevokeToken(ctx, "t_api", at(2*time.Hour)), "revoking twice is not an error")
		got, err = s.GetToken(ctx, "t_api")
		require.NoError(t, err)
		require.Equal(t, at(time.Hour), got.RevokedAt, "the first revocation time is kept")

		requireCode(t, s.RevokeToken(ctx, "t_missing", t0), deskrun.CodeNotFound)
	},
	"TouchToken": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		tok := newToken("t_api", deskrun.TokenAPI)
		require.NoError(t, s.CreateToken(ctx, tok))

		require.NoError(t, s.TouchToken(ctx, "t_api", at(time.Minute)))
		got, err := s.GetToken(ctx, "t_api")
		require.NoError(t, err)
		want := *tok
		want.LastUsed = at(time.Minute)
		require.Equal(t, &want, got, "only LastUsed changes")

		requireCode(t, s.TouchToken(ctx, "t_missing", t0), deskrun.CodeNotFound)
	},
	"UseEnrollmentToken": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		tok := newToken("t_enroll", deskrun.TokenEnrollment)
		tok.UsesLeft, tok.ExpiresAt = 2, at(time.Hour)
		require.NoError(t, s.CreateToken(ctx, tok))

		require.NoError(t, s.UseEnrollmentToken(ctx, tok.ID, at(time.Minute)))
		got, err := s.GetToken(ctx, tok.ID)
		require.NoError(t, err)
		require.Equal(t, 1, got.UsesLeft)
		require.Equal(t, at(time.Minute), got.LastUsed)

		require.NoError(t, s.UseEnrollmentToken(ctx, tok.ID, at(2*time.Minute)))
		err = s.UseEnrollmentToken(ctx, tok.ID, at(3*time.Minute))
		requireCode(t, err, deskrun.CodeEnrollmentTokenUsedUp)

		got, err = s.GetToken(ctx, tok.ID)
		require.NoError(t, err)
		require.Equal(t, 0, got.UsesLeft, "a refused use takes nothing")
		require.Equal(t, at(2*time.Minute), got.LastUsed, "a refused use is not a use")
	},
	"UseEnrollmentTokenRefusals": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		mk := func(id string, edit func(*deskrun.Token)) {
			tok := newToken(id, deskrun.TokenEnrollment)
			tok.UsesLeft = 5
			edit(tok)
			require.NoError(t, s.CreateToken(ctx, tok))
		}
		mk("t_expired", func(tok *deskrun.Token) { tok.ExpiresAt = at(time.Hour) })
		mk("t_revoked", func(tok *deskrun.Token) { tok.RevokedAt = at(-time.Hour) })
		mk("t_revoked_expired_used", func(tok *deskrun.Token) {
			tok.RevokedAt, tok.ExpiresAt, tok.UsesLeft = at(-time.Hour), at(-time.Minute), 0
		})
		mk("t_expired_used", func(tok *deskrun.Token) { tok.ExpiresAt, tok.UsesLeft = at(-time.Minute), 0 })
		mk("t_used", func(tok *deskrun.Token) { tok.UsesLeft = 0 })
		require.NoError(t, s.CreateToken(ctx, newToken("t_api", deskrun.TokenAPI)))

		for _, tc := range []struct {
			id   string
			at   time.Time
			code string
		}{
			{"t_missing", t0, deskrun.CodeEnrollmentTokenInvalid},
			{"t_api", t0, deskrun.CodeEnrollmentTokenInvalid},
			{"t_revoked", t0, deskrun.CodeEnrollmentTokenInvalid},
			{"t_revoked_expired_used", t0, deskrun.CodeEnrollmentTokenInvalid},
			{"t_expired", at(time.Hour), deskrun.CodeEnrollmentTokenExpired}, // at ExpiresAt: expired
			{"t_expired", at(2 * time.Hour), deskrun.CodeEnrollmentTokenExpired},
			{"t_expired_used", t0, deskrun.CodeEnrollmentTokenExpired},
			{"t_used", t0, deskrun.CodeEnrollmentTokenUsedUp},
			{"t_expired", at(time.Hour - time.Nanosecond), ""}, // just before: fine
		} {
			err := s.UseEnrollmentToken(ctx, tc.id, tc.at)
			if tc.code == "" {
				require.NoError(t, err, tc.id)
				continue
			}
			requireCode(t, err, tc.code)
			require.ErrorContains(t, err, tc.id)
		}

		got, err := s.GetToken(ctx, "t_revoked")
		require.NoError(t, err)
		require.Equal(t, 5, got.UsesLeft)
		require.True(t, got.LastUsed.IsZero())
	},
	"UseEnrollmentTokenRace": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		const racers = 16
		for _, uses := range []int{1, 5} {
			id := fmt.Sprintf("t_uses_%d", uses)
			tok := newToken(id, deskrun.TokenEnrollment)
			tok.UsesLeft = uses
			require.NoError(t, s.CreateToken(ctx, tok))

			errs := make([]error, racers)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range racers {
				wg.Go(func() {
					<-start
					errs[i] = s.UseEnrollmentToken(ctx, id, t0)
				})
			}
			close(start)
			wg.Wait()

			won := 0
			for _, err := range errs {
				if err == nil {
					won++
					continue
				}
				requireCode(t, err, deskrun.CodeEnrollmentTokenUsedUp)
			}
			require.Equal(t, uses, won, "exactly as many agents as uses win")
			got, err := s.GetToken(ctx, id)
			require.NoError(t, err)
			require.Zero(t, got.UsesLeft)
		}
	},
}

var jobTests = map[string]func(t *testing.T, s store.Store){
	"CreateGet": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q seq
		m := createMachine(t, s, "desk-01")

		bare := createJob(t, s, q.job(m.ID))
		got, err := s.GetJob(ctx, bare.ID)
		require.NoError(t, err)
		require.Equal(t, bare, got)

		full := q.job(m.ID)
		full.Kind = deskrun.JobSleep
		full.Payload = json.RawMessage(`{"ms":5}`)
		full.State = deskrun.JobFailed
		full.Result = json.RawMessage(`{"out":[1,2]}`)
		full.Error = &deskrun.Error{
			Code: deskrun.CodeWindowsIdentityIncorrect, Reason: "LogonTypeNotGranted", Message: "no",
			Status: "0xC000015B", StatusDecimal: -1073741477, Retryable: true, Machine: "desk-01",
			Provider: &deskrun.ProviderResult{Name: "pam", Result: "PAM_PERM_DENIED", Stage: "acct_mgmt"},
		}
		full.Progress = "step 2/3"
		full.LeaseExpires, full.FinishedAt = at(time.Hour), at(time.Minute)
		createJob(t, s, full)
		got, err = s.GetJob(ctx, full.ID)
		require.NoError(t, err)
		require.Equal(t, full, got)

		_, err = s.GetJob(ctx, "j_missing")
		requireCode(t, err, deskrun.CodeNotFound)
		require.ErrorContains(t, err, `job "j_missing" not found`)

		requireCode(t, s.CreateJob(ctx, bare), deskrun.CodeConflict)

		orphan := q.job("m_missing")
		err = s.CreateJob(ctx, orphan)
		requireCode(t, err, deskrun.CodeNotFound)
		require.ErrorContains(t, err, `machine "m_missing" not found`)
	},
	"ListJobs": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q seq
		a := createMachine(t, s, "a")
		b := createMachineWithID(t, s, "m_b", "b")

		// Oldest first: a1 queued, b1 running, a2 running, a3 succeeded, b2 queued.
		a1 := createJob(t, s, q.job(a.ID))
		b1 := q.job(b.ID)
		b1.State = deskrun.JobRunning
		createJob(t, s, b1)
		a2 := q.job(a.ID)
		a2.State = deskrun.JobRunning
		createJob(t, s, a2)
		a3 := q.job(a.ID)
		a3.State = deskrun.JobSucceeded
		createJob(t, s, a3)
		b2 := createJob(t, s, q.job(b.ID))

		for _, tc := range []struct {
			name string
			f    store.JobFilter
			want []*deskrun.Job
		}{
			{"all newest first", store.JobFilter{}, []*deskrun.Job{b2, a3, a2, b1, a1}},
			{"machine", store.JobFilter{MachineID: a.ID}, []*deskrun.Job{a3, a2, a1}},
			{"state", store.JobFilter{States: []deskrun.JobState{deskrun.JobRunning}}, []*deskrun.Job{a2, b1}},
			{"states", store.JobFilter{States: []deskrun.JobState{deskrun.JobQueued, deskrun.JobSucceeded}}, []*deskrun.Job{b2, a3, a1}},
			{"machine and states", store.JobFilter{MachineID: b.ID, States: []deskrun.JobState{deskrun.JobQueued, deskrun.JobRunning}}, []*deskrun.Job{b2, b1}},
			{"limit", store.JobFilter{Limit: 2}, []*deskrun.Job{b2, a3}},
			{"no match", store.JobFilter{MachineID: "m_missing"}, nil},
		} {
			got, err := s.ListJobs(ctx, tc.f)
			require.NoError(t, err, tc.name)
			require.Equal(t, jobIDs(tc.want), jobIDs(got), tc.name)
		}
		got, err := s.ListJobs(ctx, store.JobFilter{MachineID: a.ID, Limit: 1})
		require.NoError(t, err)
		require.Equal(t, []*deskrun.Job{a3}, got, "listed jobs are complete")
	},
	"ListJobsDefaultLimit": func(t *testing.T, s store.Store) {
		var q seq
		m := createMachine(t, s, "desk-01")
		requireDefaultLimit(t, s, func(tx store.Tx) (string, error) {
			j := q.job(m.ID)
			return j.ID, tx.CreateJob(t.Context(), j)
		}, func(limit int) ([]string, error) {
			js, err := s.ListJobs(t.Context(), store.JobFilter{Limit: limit})
			return jobIDs(js), err
		})
	},
	"UpdateJobState": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q seq
		m := createMachine(t, s, "desk-01")
		j := createJob(t, s, q.job(m.ID))

		ok, err := s.UpdateJobState(ctx, j.ID, deskrun.JobPushed, at(time.Minute), at(time.Second))
		require.NoError(t, err)
		require.True(t, ok)
		ok, err = s.UpdateJobState(ctx, j.ID, deskrun.JobRunning, at(2*time.Minute), at(2*time.Second))
		require.NoError(t, err)
		require.True(t, ok)

		want := *j
		want.State, want.LeaseExpires, want.UpdatedAt = deskrun.JobRunning, at(2*time.Minute), at(2*time.Second)
		got, err := s.GetJob(ctx, j.ID)
		require.NoError(t, err)
		require.Equal(t, &want, got)

		_, err = s.UpdateJobState(ctx, j.ID, deskrun.JobSucceeded, t0, t0)
		requireCode(t, err, deskrun.CodeInvalid)

		_, err = s.FinishJob(ctx, j.ID, deskrun.JobCancelled, nil, nil, at(3*time.Second))
		require.NoError(t, err)
		finished, err := s.GetJob(ctx, j.ID)
		require.NoError(t, err)
		for _, st := range []deskrun.JobState{deskrun.JobQueued, deskrun.JobPushed, deskrun.JobRunning} {
			ok, err = s.UpdateJobState(ctx, j.ID, st, at(time.Hour), at(time.Hour))
			require.NoError(t, err)
			require.False(t, ok, "a terminal job never moves")
		}
		got, err = s.GetJob(ctx, j.ID)
		require.NoError(t, err)
		require.Equal(t, finished, got)

		_, err = s.UpdateJobState(ctx, "j_missing", deskrun.JobPushed, t0, t0)
		requireCode(t, err, deskrun.CodeNotFound)
	},
	"SetJobProgress": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q seq
		m := createMachine(t, s, "desk-01")
		j := createJob(t, s, q.job(m.ID))

		require.NoError(t, s.SetJobProgress(ctx, j.ID, "step 1/2", at(time.Second)))
		got, err := s.GetJob(ctx, j.ID)
		require.NoError(t, err)
		require.Equal(t, "step 1/2", got.Progress)
		require.Equal(t, at(time.Second), got.UpdatedAt)
		require.Equal(t, deskrun.JobQueued, got.State, "a queued job stays queued")

		// Progress of a pushed job stands for its ack: the job is running.
		pushed := q.job(m.ID)
		pushed.State, pushed.LeaseExpires = deskrun.JobPushed, at(time.Minute)
		createJob(t, s, pushed)
		require.NoError(t, s.SetJobProgress(ctx, pushed.ID, "state:logging-on", at(time.Second)))
		want := *pushed
		want.State, want.Progress, want.UpdatedAt = deskrun.JobRunning, "state:logging-on", at(time.Second)
		got, err = s.GetJob(ctx, pushed.ID)
		require.NoError(t, err)
		require.Equal(t, &want, got)
		require.NoError(t, s.SetJobProgress(ctx, pushed.ID, "state:running", at(2*time.Second)))
		got, err = s.GetJob(ctx, pushed.ID)
		require.NoError(t, err)
		require.Equal(t, deskrun.JobRunning, got.State)

		ok, err := s.FinishJob(ctx, j.ID, deskrun.JobSucceeded, nil, nil, at(2*time.Second))
		require.NoError(t, err)
		require.True(t, ok)
		require.NoError(t, s.SetJobProgress(ctx, j.ID, "late line", at(3*time.Second)), "a late line is not an error")
		got, err = s.GetJob(ctx, j.ID)
		require.NoError(t, err)
		require.Equal(t, "step 1/2", got.Progress, "a late line changes nothing")
		require.Equal(t, at(2*time.Second), got.UpdatedAt)

		requireCode(t, s.SetJobProgress(ctx, "j_missing", "x", t0), deskrun.CodeNotFound)
	},
	"FinishJob": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q seq
		m := createMachine(t, s, "desk-01")
		j := q.job(m.ID)
		j.State, j.LeaseExpires = deskrun.JobRunning, at(time.Minute)
		createJob(t, s, j)

		jobErr := &deskrun.Error{Code: deskrun.CodeAgentLost, Message: "agent gone", Retryable: true}
		ok, err := s.FinishJob(ctx, j.ID, deskrun.JobFailed, []byte(`{"partial":true}`), jobErr, at(time.Second))
		require.NoError(t, err)
		require.True(t, ok)

		want := *j
		want.State, want.Result, want.Error = deskrun.JobFailed, json.RawMessage(`{"partial":true}`), jobErr
		want.LeaseExpires, want.UpdatedAt, want.FinishedAt = time.Time{}, at(time.Second), at(time.Second)
		got, err := s.GetJob(ctx, j.ID)
		require.NoError(t, err)
		require.Equal(t, &want, got)

		for _, st := range []deskrun.JobState{deskrun.JobSucceeded, deskrun.JobFailed, deskrun.JobCancelled} {
			ok, err = s.FinishJob(ctx, j.ID, st, []byte(`{"second":true}`), nil, at(time.Hour))
			require.NoError(t, err)
			require.False(t, ok, "a job finishes once")
		}
		got, err = s.GetJob(ctx, j.ID)
		require.NoError(t, err)
		require.Equal(t, &want, got, "the first result stays")

		other := createJob(t, s, q.job(m.ID))
		_, err = s.FinishJob(ctx, other.ID, deskrun.JobRunning, nil, nil, t0)
		requireCode(t, err, deskrun.CodeInvalid)

		_, err = s.FinishJob(ctx, "j_missing", deskrun.JobSucceeded, nil, nil, t0)
		requireCode(t, err, deskrun.CodeNotFound)
	},
	"FinishJobRace": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q seq
		m := createMachine(t, s, "desk-01")
		j := createJob(t, s, q.job(m.ID))

		const racers = 8
		won := make([]bool, racers)
		errs := make([]error, racers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range racers {
			wg.Go(func() {
				<-start
				won[i], errs[i] = s.FinishJob(ctx, j.ID, deskrun.JobSucceeded, fmt.Appendf(nil, "%d", i), nil, t0)
			})
		}
		close(start)
		wg.Wait()

		winner := -1
		for i := range racers {
			require.NoError(t, errs[i])
			if won[i] {
				require.Equal(t, -1, winner, "two callers finished the same job")
				winner = i
			}
		}
		require.NotEqual(t, -1, winner)
		got, err := s.GetJob(ctx, j.ID)
		require.NoError(t, err)
		require.Equal(t, fmt.Sprint(winner), string(got.Result), "the winner's result is stored")
	},
	"RenewLeases": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q seq
		m := createMachine(t, s, "desk-01")
		other := createMachineWithID(t, s, "m_other", "desk-02")

		jobs := map[deskrun.JobState]*deskrun.Job{}
		for _, st := range []deskrun.JobState{deskrun.JobQueued, deskrun.JobPushed, deskrun.JobRunning, deskrun.JobSucceeded} {
			j := q.job(m.ID)
			j.State, j.LeaseExpires = st, at(time.Minute)
			jobs[st] = createJob(t, s, j)
		}
		elsewhere := q.job(other.ID)
		elsewhere.State, elsewhere.LeaseExpires = deskrun.JobRunning, at(time.Minute)
		createJob(t, s, elsewhere)

		require.NoError(t, s.RenewLeases(ctx, m.ID, at(time.Hour)))

		for st, j := range jobs {
			got, err := s.GetJob(ctx, j.ID)
			require.NoError(t, err)
			want := at(time.Minute)
			if st == deskrun.JobPushed || st == deskrun.JobRunning {
				want = at(time.Hour)
			}
			require.Equal(t, want, got.LeaseExpires, "job in state %s", st)
		}
		got, err := s.GetJob(ctx, elsewhere.ID)
		require.NoError(t, err)
		require.Equal(t, at(time.Minute), got.LeaseExpires, "another machine's lease is untouched")

		require.NoError(t, s.RenewLeases(ctx, "m_missing", at(time.Hour)))
	},
}

var errBoom = errors.New("boom")

var txTests = map[string]func(t *testing.T, s store.Store){
	"Commit": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q seq
		var m *deskrun.Machine
		var j *deskrun.Job
		require.NoError(t, s.InTx(ctx, func(tx store.Tx) error {
			m = createMachine(t, tx, "desk-01")
			got, err := tx.GetMachineByName(ctx, "desk-01")
			require.NoError(t, err, "a transaction reads its own writes")
			require.Equal(t, m, got)
			j = createJob(t, tx, q.job(m.ID))
			_, err = tx.FinishJob(ctx, j.ID, deskrun.JobSucceeded, nil, nil, t0)
			return err
		}))
		_, err := s.GetMachine(ctx, m.ID)
		require.NoError(t, err)
		got, err := s.GetJob(ctx, j.ID)
		require.NoError(t, err)
		require.Equal(t, deskrun.JobSucceeded, got.State)
	},
	"RollbackLeavesNothing": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q seq
		tok := newToken("t_enroll", deskrun.TokenEnrollment)
		require.NoError(t, s.CreateToken(ctx, tok))

		var m *deskrun.Machine
		var j *deskrun.Job
		err := s.InTx(ctx, func(tx store.Tx) error {
			if err := tx.UseEnrollmentToken(ctx, tok.ID, t0); err != nil {
				return err
			}
			m = createMachine(t, tx, "desk-01")
			j = createJob(t, tx, q.job(m.ID))
			return fmt.Errorf("enroll: %w", errBoom)
		})
		require.ErrorIs(t, err, errBoom, "InTx returns fn's error")

		_, err = s.GetMachine(ctx, m.ID)
		requireCode(t, err, deskrun.CodeNotFound)
		_, err = s.GetJob(ctx, j.ID)
		requireCode(t, err, deskrun.CodeNotFound)
		got, err := s.GetToken(ctx, tok.ID)
		require.NoError(t, err)
		require.Equal(t, tok, got, "the use is given back")
	},
	"DomainErrorPassesThrough": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		createMachine(t, s, "desk-01")
		err := s.InTx(ctx, func(tx store.Tx) error {
			m := newMachine("desk-02")
			m.ID = "m_2"
			if err := tx.CreateMachine(ctx, m); err != nil {
				return err
			}
			return tx.CreateMachine(ctx, newMachine("desk-01"))
		})
		requireCode(t, err, deskrun.CodeConflict)
		_, err = s.GetMachineByName(ctx, "desk-02")
		requireCode(t, err, deskrun.CodeNotFound)
	},
	"PanicRollsBack": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		require.PanicsWithValue(t, "boom", func() {
			_ = s.InTx(ctx, func(tx store.Tx) error {
				createMachine(t, tx, "desk-01")
				panic("boom")
			})
		})
		_, err := s.GetMachineByName(ctx, "desk-01")
		requireCode(t, err, deskrun.CodeNotFound)
		// The store is still usable: the writer was given back.
		createMachine(t, s, "desk-01")
	},
	"Nested": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		mk := func(tx store.Tx, name string) error {
			m := newMachine(name)
			m.ID = "m_" + name
			return tx.CreateMachine(ctx, m)
		}
		exists := func(name string) bool {
			_, err := s.GetMachineByName(ctx, name)
			if deskrun.IsCode(err, deskrun.CodeNotFound) {
				return false
			}
			require.NoError(t, err)
			return true
		}

		// A failing inner InTx undoes only its own writes.
		require.NoError(t, s.InTx(ctx, func(tx store.Tx) error {
			if err := mk(tx, "outer"); err != nil {
				return err
			}
			err := tx.InTx(ctx, func(inner store.Tx) error {
				if err := mk(inner, "inner"); err != nil {
					return err
				}
				return errBoom
			})
			require.ErrorIs(t, err, errBoom)
			require.NoError(t, tx.InTx(ctx, func(inner store.Tx) error { return mk(inner, "inner-ok") }))
			return nil
		}))
		require.True(t, exists("outer"))
		require.False(t, exists("inner"))
		require.True(t, exists("inner-ok"))

		// A failing outer transaction undoes the inner one's writes too.
		err := s.InTx(ctx, func(tx store.Tx) error {
			require.NoError(t, tx.InTx(ctx, func(inner store.Tx) error { return mk(inner, "doomed") }))
			return errBoom
		})
		require.ErrorIs(t, err, errBoom)
		require.False(t, exists("doomed"))
	},
	"ConcurrentTransactions": func(t *testing.T, s store.Store) {
		// Read-modify-write in transactions: every increment survives.
		ctx := t.Context()
		m := createMachine(t, s, "desk-01")

		const workers, each = 4, 25
		errs := make(chan error, workers*each)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for range each {
					errs <- s.InTx(ctx, func(tx store.Tx) error {
						got, err := tx.GetMachine(ctx, m.ID)
						if err != nil {
							return err
						}
						got.Slots++
						return tx.UpdateMachineInfo(ctx, got)
					})
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		got, err := s.GetMachine(ctx, m.ID)
		require.NoError(t, err)
		require.Equal(t, m.Slots+workers*each, got.Slots)
	},
}
