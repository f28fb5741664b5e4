package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/store"
)

var userTests = map[string]func(t *testing.T, s store.Store){
	"CreateGetList": func(t *testing.T, s store.Store) {
		ctx := context.Background()
		alice := &deskrun.User{Name: "alice", PasswordHash: "$argon2id$v=19$m=65536,t=3,p=2$c2FsdA$aGFzaA", Role: deskrun.RoleAdmin, CreatedAt: t0}
		bob := &deskrun.User{Name: "bob", PasswordHash: "$argon2id$x", Role: deskrun.RoleViewer, CreatedAt: at(time.Second)}
		require.NoError(t, s.CreateUser(ctx, bob))
		require.NoError(t, s.CreateUser(ctx, alice))
		got, err := s.GetUser(ctx, "alice")
		require.NoError(t, err)
		require.Equal(t, alice, got)
		us, err := s.ListUsers(ctx)
		require.NoError(t, err)
		require.Equal(t, []*deskrun.User{alice, bob}, us)

		requireCode(t, s.CreateUser(ctx, &deskrun.User{Name: "alice", PasswordHash: "x", Role: deskrun.RoleMaker, CreatedAt: t0}), deskrun.CodeConflict)
		_, err = s.GetUser(ctx, "carol")
		requireCode(t, err, deskrun.CodeNotFound)
	},
	"Update": func(t *testing.T, s store.Store) {
		ctx := context.Background()
		u := &deskrun.User{Name: "alice", PasswordHash: "old", Role: deskrun.RoleAdmin, CreatedAt: t0}
		require.NoError(t, s.CreateUser(ctx, u))
		u.PasswordHash, u.Role = "new", deskrun.RoleViewer
		require.NoError(t, s.UpdateUser(ctx, u))
		got, err := s.GetUser(ctx, "alice")
		require.NoError(t, err)
		require.Equal(t, u, got)
		requireCode(t, s.UpdateUser(ctx, &deskrun.User{Name: "nobody", PasswordHash: "x", Role: deskrun.RoleViewer}), deskrun.CodeNotFound)
	},
	"Sessions": func(t *testing.T, s store.Store) {
		ctx := context.Background()
		a := &deskrun.Session{IDHash: []byte("hash-a-32-bytes-long-0000000000"), Actor: "user:alice", Role: deskrun.RoleAdmin,
			CSRF: "csrf-a", CreatedAt: t0, ExpiresAt: at(time.Hour)}
		b := &deskrun.Session{IDHash: []byte("hash-b-32-bytes-long-0000000000"), Actor: "token:t_x", Role: deskrun.RoleViewer,
			CSRF: "csrf-b", CreatedAt: t0, ExpiresAt: at(2 * time.Hour)}
		require.NoError(t, s.CreateSession(ctx, a))
		require.NoError(t, s.CreateSession(ctx, b))
		got, err := s.GetSession(ctx, a.IDHash)
		require.NoError(t, err)
		require.Equal(t, a, got)
		_, err = s.GetSession(ctx, []byte("other"))
		requireCode(t, err, deskrun.CodeNotFound)

		n, err := s.DeleteExpiredSessions(ctx, at(time.Hour))
		require.NoError(t, err)
		require.Equal(t, 1, n)
		_, err = s.GetSession(ctx, a.IDHash)
		requireCode(t, err, deskrun.CodeNotFound)

		require.NoError(t, s.DeleteSession(ctx, b.IDHash))
		require.NoError(t, s.DeleteSession(ctx, b.IDHash)) // again: harmless
		_, err = s.GetSession(ctx, b.IDHash)
		requireCode(t, err, deskrun.CodeNotFound)
	},
}
