package wire

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
)

func TestTokens(t *testing.T) {
	t.Parallel()
	et := EnrollmentToken{URL: "https://h:1", CAFingerprint: strings.Repeat("a", 64), ID: "e_1", Secret: "s3cret"}
	got, err := ParseEnrollmentToken(et.Encode())
	require.NoError(t, err)
	require.Equal(t, et, got)
	for _, bad := range []string{"", "dre1_", "drt_x.y", "dre1_%%%", "dre1_e30", EnrollmentToken{URL: "u", CAFingerprint: "short", ID: "i", Secret: "s"}.Encode()} {
		_, err := ParseEnrollmentToken(bad)
		require.Equal(t, deskrun.CodeEnrollmentTokenInvalid, deskrun.ErrorCode(err), bad)
		if err != nil {
			require.NotContains(t, err.Error(), "s3cret")
		}
	}
	id, sec, ok := ParseAPIToken(FormatAPIToken("t_1", "abc"))
	require.True(t, ok)
	require.Equal(t, "t_1", id)
	require.Equal(t, "abc", sec)
	for _, bad := range []string{"", "drt_", "drt_.x", "drt_x.", "x_t.s"} {
		_, _, ok := ParseAPIToken(bad)
		require.False(t, ok, bad)
	}
}
