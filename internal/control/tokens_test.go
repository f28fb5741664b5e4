package control

import (
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/wire"
)

// TestTokenLastUsed: a token's use is recorded, at most once a minute, and
// a refused one is not a use.
func TestTokenLastUsed(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "deskrun.db"))
	c := &clock{now: t0}
	s := &Service{Store: st, Log: slog.New(slog.DiscardHandler), Now: c.Now}
	ctx := t.Context()
	tok, secret, err := s.CreateToken(ctx, wire.TokenCreate{Kind: string(deskrun.TokenAPI), Name: "ci"})
	require.NoError(t, err)
	lastUsed := func() time.Time {
		got, err := st.GetToken(ctx, tok.ID)
		require.NoError(t, err)
		return got.LastUsed
	}
	require.True(t, lastUsed().IsZero())

	_, err = s.Authenticate(ctx, secret)
	require.NoError(t, err)
	require.Equal(t, t0, lastUsed())

	c.Add(30 * time.Second) // within the minute: not written again
	_, err = s.Authenticate(ctx, secret)
	require.NoError(t, err)
	require.Equal(t, t0, lastUsed())

	c.Add(31 * time.Second)
	_, err = s.Authenticate(ctx, secret)
	require.NoError(t, err)
	require.Equal(t, t0.Add(61*time.Second), lastUsed())

	c.Add(time.Hour)
	_, err = s.Authenticate(ctx, secret+"x")
	require.Equal(t, deskrun.CodeUnauthorized, deskrun.ErrorCode(err))
	require.Equal(t, t0.Add(61*time.Second), lastUsed(), "a refused token is not used")
}
