package pam_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/pam"
)

// The agent learns that logons go through a directory from the services
// install-pam wrote (a machine's sssd.conf may live elsewhere).
func TestInstalledDirectory(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{"", "sss", "winbind"} {
		s := pam.DefaultStack()
		s.PAMDir = filepath.Join(t.TempDir(), "pam.d")
		require.NoError(t, os.MkdirAll(s.PAMDir, 0o755))
		require.Equal(t, "", s.InstalledDirectory(identity.LogonInteractive), "no service installed")
		s.Directory = dir
		require.NoError(t, os.WriteFile(s.ServiceFile(identity.LogonInteractive), []byte(s.Render(identity.LogonInteractive)), 0o644))
		s.Directory = ""
		require.Equal(t, dir, s.InstalledDirectory(identity.LogonInteractive))
	}
}
