package identity_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
)

func TestDetectJoin(t *testing.T) {
	t.Parallel()
	write := func(dir, name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	t.Run("local", func(t *testing.T) {
		t.Parallel()
		d := t.TempDir()
		info, err := identity.DetectJoin(identity.HostPaths{SSSDConf: d + "/no", Krb5Conf: d + "/no", SmbConf: d + "/no"})
		require.NoError(t, err)
		require.Equal(t, deskrun.JoinLocal, info.State)
	})
	t.Run("sssd", func(t *testing.T) {
		t.Parallel()
		d := t.TempDir()
		p := identity.HostPaths{
			SSSDConf: write(d, "sssd.conf", "[sssd]\ndomains = corp.example\n[domain/corp.example]\nid_provider = ad\nad_server = dc1.corp.example, _srv_\n"),
			Krb5Conf: write(d, "krb5.conf", "[libdefaults]\n default_realm = CORP.EXAMPLE\n[realms]\n CORP.EXAMPLE = {\n  kdc = dc1.corp.example:88\n }\n"),
		}
		info, err := identity.DetectJoin(p)
		require.NoError(t, err)
		require.Equal(t, deskrun.JoinSSSD, info.State)
		require.Equal(t, "corp.example", info.Domain)
		require.Equal(t, "CORP.EXAMPLE", info.Realm)
		require.Equal(t, []string{"dc1.corp.example:88", "dc1.corp.example"}, info.Servers)
	})
	t.Run("winbind", func(t *testing.T) {
		t.Parallel()
		d := t.TempDir()
		p := identity.HostPaths{SmbConf: write(d, "smb.conf", "[global]\n  workgroup = CORP\n  security = ADS\n  realm = corp.example\n")}
		info, err := identity.DetectJoin(p)
		require.NoError(t, err)
		require.Equal(t, deskrun.JoinWinbind, info.State)
		require.Equal(t, "CORP.EXAMPLE", info.Realm)
		require.Equal(t, "CORP", info.Workgroup)
	})
}
