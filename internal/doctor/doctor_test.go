package doctor_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/doctor"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/pam"
)

// TestRunMachineWide: the agent's report on a machine with no domain and
// one PAM service installed badly, the others missing. It touches no
// network: with no domain the endpoint checks are skipped.
func TestRunMachineWide(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	stack := pam.DefaultStack()
	stack.PAMDir = filepath.Join(dir, "pam.d")
	require.NoError(t, os.MkdirAll(stack.PAMDir, 0o755))
	require.NoError(t, os.WriteFile(stack.ServiceFile(identity.LogonInteractive), []byte("auth required pam_unix.so\n"), 0o644))
	none := filepath.Join(dir, "none")
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	r := doctor.Run(t.Context(), doctor.Options{Stack: stack, Timeout: time.Second,
		Paths:           identity.HostPaths{SSSDConf: none, Krb5Conf: none, SmbConf: none},
		DirectoryConfig: none, StateDir: dir, Now: func() time.Time { return at }})

	require.Equal(t, at, r.At)
	got := map[string]doctor.Check{}
	for _, c := range r.Checks {
		got[c.Name] = c
	}
	require.Contains(t, got, "root")
	require.Contains(t, got, "pam")
	in := got["pam service interactive"]
	require.Equal(t, doctor.Warn, in.Status, in.Detail)
	require.Contains(t, in.Detail, "pam_unix.so without nodelay")
	require.Equal(t, "deskrun agent install-pam --pam-dir "+stack.PAMDir, in.Fix)
	for _, lt := range []string{"batch", "network"} {
		c := got["pam service "+lt]
		require.Equal(t, doctor.Fail, c.Status)
		require.Contains(t, c.Detail, "missing")
	}
	require.Equal(t, doctor.Pass, got["join"].Status)
	require.Contains(t, got["join"].Detail, "local-only")
	require.Equal(t, doctor.Skip, got["auth endpoints"].Status)
	require.Equal(t, doctor.Skip, got["clock skew"].Status)
	require.Equal(t, doctor.Skip, got["directory"].Status)
	for _, c := range r.Checks {
		require.NotContains(t, []string{"nss", "account", "username"}, c.Name, "no user checks without a user")
	}
	require.True(t, r.Failed())
	n := r.Counts()
	require.Equal(t, len(r.Checks), n.Pass+n.Warn+n.Fail+n.Skip)
	require.Equal(t, 3, n.Skip)
}
