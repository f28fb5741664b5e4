package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/store"
)

// newConnection returns a connection to machine group "g_desks" with
// credentials sealed to two machines, in machine id order (the order Get
// returns them in).
func newConnection(id, name string) *deskrun.Connection {
	return &deskrun.Connection{
		ID:        id,
		Name:      name,
		Target:    "g_desks",
		Username:  "svc-" + name + "@TEST.EXAMPLE",
		RunMode:   deskrun.RunUnattended,
		LogonType: "interactive",
		Owner:     "t_admin",
		State:     deskrun.ConnectionHealthy,
		Credentials: []deskrun.SealedCredential{
			{MachineID: "m_a", KeyID: "sk1", Ciphertext: []byte("sealed " + id + " for m_a")},
			{MachineID: "m_b", KeyID: "sk7", Ciphertext: []byte("sealed " + id + " for m_b")},
		},
		StateChangedAt: t0,
		LastTestedAt:   t0,
		CreatedAt:      t0,
		UpdatedAt:      t0,
	}
}

func createConnection(t *testing.T, s store.Tx, id, name string) *deskrun.Connection {
	t.Helper()
	c := newConnection(id, name)
	require.NoError(t, s.CreateConnection(t.Context(), c))
	return c
}

func getConnection(t *testing.T, s store.Tx, id string) *deskrun.Connection {
	t.Helper()
	c, err := s.GetConnection(t.Context(), id)
	require.NoError(t, err)
	return c
}

func connectionExists(t *testing.T, s store.Tx, id string) bool {
	t.Helper()
	_, err := s.GetConnection(t.Context(), id)
	if deskrun.IsCode(err, deskrun.CodeNotFound) {
		return false
	}
	require.NoError(t, err)
	return true
}

// fullError sets every field of deskrun.Error, so that a round trip that
// drops one fails.
func fullError() *deskrun.Error {
	return &deskrun.Error{
		Code:          deskrun.CodeWindowsIdentityIncorrect,
		Reason:        "PasswordExpired",
		Message:       "the password of svc-build expired",
		Status:        "0xC0000071",
		StatusDecimal: -1073741711,
		Provider: &deskrun.ProviderResult{
			Name: "pam", Result: "PAM_NEW_AUTHTOK_REQD", Stage: "acct_mgmt", Detail: "Password expired. Change your password now.",
		},
		Resolution: "Set a new password with `deskrun connection update`.",
		Retryable:  false,
		Definitive: true,
		Machine:    "desk-01",
		Field:      "password",
		RequestID:  "req_1",
	}
}

func connectionNames(cs []*deskrun.Connection) []string {
	return ids(cs, func(c *deskrun.Connection) string { return c.Name })
}

var connectionTests = map[string]func(t *testing.T, s store.Store){
	"CreateGet": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		c := newConnection("c_full", "build")
		c.State, c.Reason, c.LastError = deskrun.ConnectionBroken, "PasswordExpired", fullError()
		c.StateChangedAt, c.LastTestedAt = at(time.Minute), at(2*time.Minute)
		c.ExpiresInDays, c.ExpiryCheckedAt = 3, at(3*time.Minute)
		c.UpdatedAt = at(time.Hour)
		require.NoError(t, s.CreateConnection(ctx, c))

		require.Equal(t, c, getConnection(t, s, c.ID))
		got, err := s.GetConnectionByName(ctx, "build")
		require.NoError(t, err)
		require.Equal(t, c, got)
		sc, ok := got.CredentialFor("m_b")
		require.True(t, ok)
		require.Equal(t, c.Credentials[1], sc)
	},
	"GetMany": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		b := createConnection(t, s, "c_b", "bravo")
		a := createConnection(t, s, "c_a", "alpha")
		none := newConnection("c_none", "charlie")
		none.Credentials = nil
		require.NoError(t, s.CreateConnection(ctx, none))
		createConnection(t, s, "c_other", "delta")

		got, err := s.GetConnections(ctx, []string{"c_b", "c_missing", "c_none", "c_a", "c_b"})
		require.NoError(t, err)
		require.Equal(t, []*deskrun.Connection{a, b, none}, got, "by name, each once, with its credentials; a missing id is left out")
		got, err = s.GetConnections(ctx, nil)
		require.NoError(t, err)
		require.Empty(t, got)
	},
	"ZeroValues": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		c := &deskrun.Connection{ID: "c_bare", Name: "bare", Target: "m_1", Username: "u"}
		require.NoError(t, s.CreateConnection(ctx, c))
		require.Equal(t, c, getConnection(t, s, c.ID), "no credentials, no error and zero times read back as nil and zero")

		c2 := &deskrun.Connection{ID: "c_empty", Name: "empty", Credentials: []deskrun.SealedCredential{}}
		require.NoError(t, s.CreateConnection(ctx, c2))
		require.Nil(t, getConnection(t, s, c2.ID).Credentials, "an empty slice of credentials reads back as nil")
	},
	"CiphertextIsOpaque": func(t *testing.T, s store.Store) {
		// The store only ever sees ciphertext: arbitrary bytes, not text.
		c := newConnection("c_1", "build")
		binary := make([]byte, 256)
		for i := range binary {
			binary[i] = byte(i)
		}
		c.Credentials = []deskrun.SealedCredential{{MachineID: "m_a", KeyID: "sk1", Ciphertext: binary}}
		require.NoError(t, s.CreateConnection(t.Context(), c))
		require.Equal(t, binary, getConnection(t, s, c.ID).Credentials[0].Ciphertext)
	},
	"LastErrorRoundTrip": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		c := newConnection("c_1", "build")
		c.LastError = fullError()
		require.NoError(t, s.CreateConnection(ctx, c))
		require.Equal(t, fullError(), getConnection(t, s, c.ID).LastError, "create")

		cs, err := s.ListConnections(ctx)
		require.NoError(t, err)
		require.Len(t, cs, 1)
		require.Equal(t, fullError(), cs[0].LastError, "list")

		other := &deskrun.Error{Code: deskrun.CodeWindowsIdentityIncorrect, Reason: "AccountLockedOut", Retryable: true}
		c.LastError = other
		require.NoError(t, s.SetConnectionHealth(ctx, c))
		require.Equal(t, other, getConnection(t, s, c.ID).LastError, "set health")

		c.LastError = fullError()
		c.Credentials = nil
		require.NoError(t, s.UpdateConnection(ctx, c))
		require.Equal(t, fullError(), getConnection(t, s, c.ID).LastError, "update")

		c.LastError = nil
		require.NoError(t, s.SetConnectionHealth(ctx, c))
		require.Nil(t, getConnection(t, s, c.ID).LastError, "a nil error clears it")
	},
	"NotFound": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		createConnection(t, s, "c_1", "build")

		_, err := s.GetConnection(ctx, "c_missing")
		requireCode(t, err, deskrun.CodeNotFound)
		require.ErrorContains(t, err, `connection "c_missing" not found`)

		_, err = s.GetConnectionByName(ctx, "nobody")
		requireCode(t, err, deskrun.CodeNotFound)
		require.ErrorContains(t, err, `connection named "nobody" not found`)

		missing := newConnection("c_missing", "ghost")
		for name, err := range map[string]error{
			"update":     s.UpdateConnection(ctx, missing),
			"set health": s.SetConnectionHealth(ctx, missing),
			"delete":     s.DeleteConnection(ctx, "c_missing"),
		} {
			requireCode(t, err, deskrun.CodeNotFound)
			require.ErrorContains(t, err, `connection "c_missing" not found`, name)
		}
		_, err = s.GetConnectionByName(ctx, "ghost")
		requireCode(t, err, deskrun.CodeNotFound)
	},
	"DuplicateName": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		first := createConnection(t, s, "c_1", "build")

		dup := newConnection("c_2", "build")
		err := s.CreateConnection(ctx, dup)
		requireCode(t, err, deskrun.CodeConflict)
		require.ErrorContains(t, err, `a connection named "build" already exists`)
		require.False(t, connectionExists(t, s, "c_2"), "a refused create writes nothing")
		require.Equal(t, first, getConnection(t, s, first.ID), "the first keeps its credentials")

		// Renaming onto a taken name is refused too, credentials and all.
		other := createConnection(t, s, "c_3", "deploy")
		rename := newConnection("c_3", "build")
		rename.Credentials = []deskrun.SealedCredential{{MachineID: "m_z", Ciphertext: []byte("new")}}
		err = s.UpdateConnection(ctx, rename)
		requireCode(t, err, deskrun.CodeConflict)
		require.ErrorContains(t, err, `a connection named "build" already exists`)
		require.Equal(t, other, getConnection(t, s, other.ID))

		// The name is free again once the connection is deleted.
		require.NoError(t, s.DeleteConnection(ctx, first.ID))
		require.NoError(t, s.CreateConnection(ctx, dup))
	},
	"DuplicateID": func(t *testing.T, s store.Store) {
		c := createConnection(t, s, "c_1", "build")
		err := s.CreateConnection(t.Context(), newConnection("c_1", "deploy"))
		requireCode(t, err, deskrun.CodeConflict)
		require.ErrorContains(t, err, `"c_1"`)
		require.Equal(t, c, getConnection(t, s, c.ID))
	},
	"InvalidCredentials": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		twice := newConnection("c_1", "build")
		twice.Credentials = append(twice.Credentials, deskrun.SealedCredential{MachineID: "m_a", Ciphertext: []byte("x")})
		empty := newConnection("c_1", "build")
		empty.Credentials[1].Ciphertext = nil
		noMachine := newConnection("c_1", "build")
		noMachine.Credentials[0].MachineID = ""
		for name, c := range map[string]*deskrun.Connection{"twice": twice, "empty": empty, "no machine": noMachine} {
			requireCode(t, s.CreateConnection(ctx, c), deskrun.CodeInvalid)
			require.False(t, connectionExists(t, s, "c_1"), name)
		}

		c := createConnection(t, s, "c_1", "build")
		requireCode(t, s.UpdateConnection(ctx, twice), deskrun.CodeInvalid)
		require.Equal(t, c, getConnection(t, s, c.ID), "a refused update changes nothing")
	},
	"ListByName": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		cs, err := s.ListConnections(ctx)
		require.NoError(t, err)
		require.Empty(t, cs)

		charlie := createConnection(t, s, "c_1", "charlie")
		alpha := newConnection("c_2", "alpha")
		alpha.Credentials = nil
		require.NoError(t, s.CreateConnection(ctx, alpha))
		bravo := newConnection("c_3", "bravo")
		bravo.Credentials = []deskrun.SealedCredential{
			{MachineID: "m_a", KeyID: "sk2", Ciphertext: []byte("bravo a")},
			{MachineID: "m_c", KeyID: "sk3", Ciphertext: []byte("bravo c")},
			{MachineID: "m_d", KeyID: "sk4", Ciphertext: []byte("bravo d")},
		}
		require.NoError(t, s.CreateConnection(ctx, bravo))

		cs, err = s.ListConnections(ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"alpha", "bravo", "charlie"}, connectionNames(cs))
		require.Equal(t, []*deskrun.Connection{alpha, bravo, charlie}, cs,
			"listed connections are complete, each with its own credentials")
	},
	"UpdateKeepsCredentials": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		c := createConnection(t, s, "c_1", "build")

		edit := &deskrun.Connection{
			ID: c.ID, Name: "build-2", Target: "g_other", Username: "svc-new@TEST.EXAMPLE",
			RunMode: deskrun.RunAttended, LogonType: "batch", Owner: "t_intruder",
			State: deskrun.ConnectionUntested, Reason: "SkipTest", LastError: fullError(),
			StateChangedAt: at(time.Minute), LastTestedAt: at(2 * time.Minute),
			ExpiresInDays: 5, ExpiryCheckedAt: at(3 * time.Minute),
			CreatedAt: at(time.Hour), UpdatedAt: at(4 * time.Minute),
			Credentials: nil,
		}
		require.NoError(t, s.UpdateConnection(ctx, edit))

		want := *edit
		want.Owner, want.CreatedAt = c.Owner, c.CreatedAt
		want.Credentials = c.Credentials
		require.Equal(t, &want, getConnection(t, s, c.ID),
			"every field but id, owner and creation time changes; nil credentials keep the old ciphertext")
		_, err := s.GetConnectionByName(ctx, "build")
		requireCode(t, err, deskrun.CodeNotFound)
	},
	"UpdateReplacesCredentials": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		c := createConnection(t, s, "c_1", "build")
		other := createConnection(t, s, "c_2", "deploy")

		c.Credentials = []deskrun.SealedCredential{ // m_a gone, m_b resealed, m_c new
			{MachineID: "m_b", KeyID: "sk8", Ciphertext: []byte("resealed for m_b")},
			{MachineID: "m_c", KeyID: "sk9", Ciphertext: []byte("sealed for m_c")},
		}
		c.UpdatedAt = at(time.Minute)
		require.NoError(t, s.UpdateConnection(ctx, c))
		require.Equal(t, c, getConnection(t, s, c.ID))
		require.Equal(t, other, getConnection(t, s, other.ID), "another connection's credentials are untouched")

		c.Credentials = []deskrun.SealedCredential{}
		require.NoError(t, s.UpdateConnection(ctx, c))
		require.Nil(t, getConnection(t, s, c.ID).Credentials, "an empty, non-nil slice removes them all")
	},
	"SetConnectionHealth": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		c := createConnection(t, s, "c_1", "build")

		health := newConnection(c.ID, "renamed")
		health.Username, health.Target, health.Owner = "someone-else", "g_other", "t_other"
		health.RunMode, health.LogonType = deskrun.RunAttended, "network"
		health.Credentials = []deskrun.SealedCredential{{MachineID: "m_x", Ciphertext: []byte("must not be written")}}
		health.CreatedAt, health.UpdatedAt = at(time.Hour), at(time.Hour)
		health.State, health.Reason, health.LastError = deskrun.ConnectionExpiring, "PasswordExpiresSoon", fullError()
		health.StateChangedAt, health.LastTestedAt = at(time.Minute), at(2*time.Minute)
		health.ExpiresInDays, health.ExpiryCheckedAt = 4, at(3*time.Minute)
		require.NoError(t, s.SetConnectionHealth(ctx, health))

		want := *c
		want.State, want.Reason, want.LastError = health.State, health.Reason, health.LastError
		want.StateChangedAt, want.LastTestedAt = health.StateChangedAt, health.LastTestedAt
		want.ExpiresInDays, want.ExpiryCheckedAt = health.ExpiresInDays, health.ExpiryCheckedAt
		require.Equal(t, &want, getConnection(t, s, c.ID),
			"only the health fields change: not the name, username, credentials or UpdatedAt")

		// Back to healthy: the fields are written, zero values included.
		healthy := *c
		healthy.State, healthy.LastTestedAt = deskrun.ConnectionHealthy, at(time.Hour)
		require.NoError(t, s.SetConnectionHealth(ctx, &healthy))
		require.Equal(t, &healthy, getConnection(t, s, c.ID))
	},
	"DeleteCascades": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		c := createConnection(t, s, "c_1", "build")
		other := createConnection(t, s, "c_2", "deploy")

		require.NoError(t, s.DeleteConnection(ctx, c.ID))
		require.False(t, connectionExists(t, s, c.ID))
		_, err := s.GetConnectionByName(ctx, "build")
		requireCode(t, err, deskrun.CodeNotFound)
		require.Equal(t, other, getConnection(t, s, other.ID), "other connections keep their credentials")
		requireCode(t, s.DeleteConnection(ctx, c.ID), deskrun.CodeNotFound)

		// The credentials went with it: the same id comes back without any,
		// and can then seal to the same machines again.
		bare := newConnection(c.ID, "build")
		bare.Credentials = nil
		require.NoError(t, s.CreateConnection(ctx, bare))
		require.Nil(t, getConnection(t, s, c.ID).Credentials)
		require.NoError(t, s.DeleteConnection(ctx, c.ID))
		require.NoError(t, s.CreateConnection(ctx, c))
		require.Equal(t, c, getConnection(t, s, c.ID))
	},
}

// auditSeq makes audit events one millisecond apart, so that id order is
// time order whatever NewID's random bits.
type auditSeq struct{ n int }

func (q *auditSeq) event(action, connectionID string) *deskrun.AuditEvent {
	q.n++
	when := at(time.Duration(q.n) * time.Millisecond)
	return &deskrun.AuditEvent{
		ID:             deskrun.NewID("ev", when),
		At:             when,
		Actor:          "t_admin",
		Action:         action,
		ConnectionID:   connectionID,
		ConnectionName: "name of " + connectionID,
		MachineID:      "m_a",
		Result:         "ok",
		Reason:         fmt.Sprintf("reason %d", q.n),
		Detail:         fmt.Sprintf("detail %d", q.n),
	}
}

func appendAudit(t *testing.T, s store.Tx, e *deskrun.AuditEvent) *deskrun.AuditEvent {
	t.Helper()
	require.NoError(t, s.AppendAudit(t.Context(), e))
	return e
}

func auditIDs(es []*deskrun.AuditEvent) []string {
	return ids(es, func(e *deskrun.AuditEvent) string { return e.ID })
}

var auditTests = map[string]func(t *testing.T, s store.Store){
	"AppendList": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q auditSeq
		es, err := s.ListAudit(ctx, store.AuditFilter{})
		require.NoError(t, err)
		require.Empty(t, es)

		// Oldest first: c1 create, c2 create, c1 logon, c1 broken, c2 logon.
		c1create := appendAudit(t, s, q.event(deskrun.AuditConnectionCreate, "c_1"))
		c2create := appendAudit(t, s, q.event(deskrun.AuditConnectionCreate, "c_2"))
		c1logon := q.event(deskrun.AuditLogonAttempt, "c_1")
		c1logon.Actor, c1logon.Result, c1logon.Reason = "agent:m_a", "failed", "PasswordExpired"
		appendAudit(t, s, c1logon)
		c1broken := appendAudit(t, s, q.event(deskrun.AuditConnectionBroken, "c_1"))
		c2logon := appendAudit(t, s, q.event(deskrun.AuditLogonAttempt, "c_2"))

		for _, tc := range []struct {
			name string
			f    store.AuditFilter
			want []*deskrun.AuditEvent
		}{
			{"all newest first", store.AuditFilter{}, []*deskrun.AuditEvent{c2logon, c1broken, c1logon, c2create, c1create}},
			{"connection", store.AuditFilter{ConnectionID: "c_1"}, []*deskrun.AuditEvent{c1broken, c1logon, c1create}},
			{"action", store.AuditFilter{Action: deskrun.AuditLogonAttempt}, []*deskrun.AuditEvent{c2logon, c1logon}},
			{"connection and action", store.AuditFilter{ConnectionID: "c_2", Action: deskrun.AuditConnectionCreate}, []*deskrun.AuditEvent{c2create}},
			{"limit", store.AuditFilter{Limit: 2}, []*deskrun.AuditEvent{c2logon, c1broken}},
			{"connection and limit", store.AuditFilter{ConnectionID: "c_1", Limit: 1}, []*deskrun.AuditEvent{c1broken}},
			{"no match", store.AuditFilter{ConnectionID: "c_missing"}, nil},
		} {
			got, err := s.ListAudit(ctx, tc.f)
			require.NoError(t, err, tc.name)
			require.Equal(t, auditIDs(tc.want), auditIDs(got), tc.name)
		}
		got, err := s.ListAudit(ctx, store.AuditFilter{ConnectionID: "c_1", Action: deskrun.AuditLogonAttempt})
		require.NoError(t, err)
		require.Equal(t, []*deskrun.AuditEvent{c1logon}, got, "listed events are complete")
	},
	"ZeroValues": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		e := &deskrun.AuditEvent{ID: "ev_1", Action: deskrun.AuditCredentialSeal}
		appendAudit(t, s, e)
		got, err := s.ListAudit(ctx, store.AuditFilter{})
		require.NoError(t, err)
		require.Equal(t, []*deskrun.AuditEvent{e}, got)
	},
	"Refusals": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q auditSeq
		e := appendAudit(t, s, q.event(deskrun.AuditConnectionCreate, "c_1"))

		dup := *e
		dup.Detail = "second"
		err := s.AppendAudit(ctx, &dup)
		requireCode(t, err, deskrun.CodeConflict)
		require.ErrorContains(t, err, e.ID)

		noID := q.event(deskrun.AuditConnectionCreate, "c_1")
		noID.ID = ""
		requireCode(t, s.AppendAudit(ctx, noID), deskrun.CodeInvalid)
		noAction := q.event("", "c_1")
		requireCode(t, s.AppendAudit(ctx, noAction), deskrun.CodeInvalid)

		got, err := s.ListAudit(ctx, store.AuditFilter{})
		require.NoError(t, err)
		require.Equal(t, []*deskrun.AuditEvent{e}, got, "refused events are not logged")
	},
	"DefaultLimit": func(t *testing.T, s store.Store) {
		var q auditSeq
		requireDefaultLimit(t, s, func(tx store.Tx) (string, error) {
			e := q.event(deskrun.AuditCredentialUnseal, "c_1")
			return e.ID, tx.AppendAudit(t.Context(), e)
		}, func(limit int) ([]string, error) {
			es, err := s.ListAudit(t.Context(), store.AuditFilter{Limit: limit})
			return auditIDs(es), err
		})
	},
	"OutlivesTheConnection": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q auditSeq
		c := createConnection(t, s, "c_1", "build")
		e := appendAudit(t, s, q.event(deskrun.AuditConnectionCreate, c.ID))
		require.NoError(t, s.DeleteConnection(ctx, c.ID))
		got, err := s.ListAudit(ctx, store.AuditFilter{ConnectionID: c.ID})
		require.NoError(t, err)
		require.Equal(t, []*deskrun.AuditEvent{e}, got)
	},
}

// connectionTxTests check that connection writes are atomic on their own
// and within a caller's transaction.
var connectionTxTests = map[string]func(t *testing.T, s store.Store){
	"RollbackLeavesNothing": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		var q auditSeq
		err := s.InTx(ctx, func(tx store.Tx) error {
			c := createConnection(t, tx, "c_1", "build")
			require.Equal(t, c, getConnection(t, tx, c.ID), "a transaction reads its own writes, credentials included")
			appendAudit(t, tx, q.event(deskrun.AuditConnectionCreate, c.ID))
			return fmt.Errorf("create connection: %w", errBoom)
		})
		require.ErrorIs(t, err, errBoom)
		require.False(t, connectionExists(t, s, "c_1"))
		_, err = s.GetConnectionByName(ctx, "build")
		requireCode(t, err, deskrun.CodeNotFound)
		es, err := s.ListAudit(ctx, store.AuditFilter{})
		require.NoError(t, err)
		require.Empty(t, es, "the audit event is rolled back with the connection")

		// Nothing is left behind: not even credentials under the id.
		c := newConnection("c_1", "build")
		c.Credentials = nil
		require.NoError(t, s.CreateConnection(ctx, c))
		require.Nil(t, getConnection(t, s, "c_1").Credentials)
	},
	"RollbackUndoesUpdate": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		c := createConnection(t, s, "c_1", "build")
		err := s.InTx(ctx, func(tx store.Tx) error {
			edit := *c
			edit.Name, edit.Username = "renamed", "other"
			edit.Credentials = []deskrun.SealedCredential{{MachineID: "m_z", Ciphertext: []byte("z")}}
			require.NoError(t, tx.UpdateConnection(ctx, &edit))
			require.NoError(t, tx.SetConnectionHealth(ctx, &deskrun.Connection{ID: c.ID, State: deskrun.ConnectionBroken}))
			return errBoom
		})
		require.ErrorIs(t, err, errBoom)
		require.Equal(t, c, getConnection(t, s, c.ID))
	},
	"FailedWriteInsideTx": func(t *testing.T, s store.Store) {
		// A refused create inside a transaction undoes only itself: the
		// caller may go on and commit.
		ctx := t.Context()
		var a, c *deskrun.Connection
		require.NoError(t, s.InTx(ctx, func(tx store.Tx) error {
			a = createConnection(t, tx, "c_a", "alpha")
			err := tx.CreateConnection(ctx, newConnection("c_b", "alpha"))
			requireCode(t, err, deskrun.CodeConflict)
			c = createConnection(t, tx, "c_c", "charlie")
			return nil
		}))
		cs, err := s.ListConnections(ctx)
		require.NoError(t, err)
		require.Equal(t, []*deskrun.Connection{a, c}, cs)
	},
	"DeleteInTx": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		c := createConnection(t, s, "c_1", "build")
		err := s.InTx(ctx, func(tx store.Tx) error {
			require.NoError(t, tx.DeleteConnection(ctx, c.ID))
			require.False(t, connectionExists(t, tx, c.ID))
			return errBoom
		})
		require.ErrorIs(t, err, errBoom)
		require.Equal(t, c, getConnection(t, s, c.ID), "the delete and its cascade are rolled back")
	},
}
