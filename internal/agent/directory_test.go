package agent_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/agent"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/seal"
)

const agentYAML = `# the agent's config
log_level: info   # another section's key: not the directory's business
directory:
  url: ldaps://dc1.corp.example
  ca_file: /etc/deskrun/corp-ca.pem
  domain: corp.example
  service_user: svc-deskrun@corp.example # read-only
  warn_days: 10
`

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

func TestDirectoryConfigLoad(t *testing.T) {
	t.Parallel()
	path := writeFile(t, agentYAML)
	_, err := agent.LoadDirectoryConfig(path)
	require.ErrorContains(t, err, "service account has no password", "a service account without its sealed password")

	c, err := agent.LoadDirectoryConfig(writeFile(t, strings.Replace(agentYAML, "  service_user: svc-deskrun@corp.example # read-only\n", "", 1)))
	require.NoError(t, err)
	require.Equal(t, "ldaps://dc1.corp.example", c.URL)
	require.Equal(t, 10, c.WarnDays)

	c, err = agent.LoadDirectoryConfig(writeFile(t, "log_level: info\n"))
	require.NoError(t, err)
	require.Nil(t, c, "no directory section")

	for body, want := range map[string]string{
		"directory:\n  url: ldaps://dc\n  domain: corp.example\n  sevice_user: x\n": `[4:3] unknown field "sevice_user"`,
		"directory:\n  url: ldap://dc\n  domain: corp.example\n":                    "start_tls",
		"directory:\n  url: ldaps://dc\n":                                           "domain is required",
		"directory:\n  url: ldaps://dc\n  domain: [x\n":                             "agent config",
	} {
		_, err := agent.LoadDirectoryConfig(writeFile(t, body))
		var de *deskrun.Error
		require.True(t, errors.As(err, &de), "%q: %v", body, err)
		require.Equal(t, deskrun.CodeInvalid, de.Code)
		require.Contains(t, de.Message, want, body)
	}
}

func TestDirectoryServicePasswordSealed(t *testing.T) {
	t.Parallel()
	key, err := seal.GenerateKey()
	require.NoError(t, err)
	path := writeFile(t, agentYAML)
	secret := "Sv3-Secret!pw"
	require.NoError(t, agent.SetServicePassword(path, key.Public, []byte(secret)))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NotContains(t, string(b), secret, "never in clear")
	require.Contains(t, string(b), "# read-only", "comments kept")
	require.Contains(t, string(b), "log_level: info", "other sections kept")
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	c, err := agent.LoadDirectoryConfig(path)
	require.NoError(t, err)
	require.NotEmpty(t, c.ServicePasswordSealed)
	first := c.ServicePasswordSealed
	// Setting it again replaces the value.
	require.NoError(t, agent.SetServicePassword(path, key.Public, []byte(secret)))
	c, err = agent.LoadDirectoryConfig(path)
	require.NoError(t, err)
	require.NotEqual(t, first, c.ServicePasswordSealed)
	require.Equal(t, 1, strings.Count(mustRead(t, path), "service_password_sealed"))

	p, err := c.DirectoryProvider(key.Private, "m1")
	require.NoError(t, err)
	require.NotNil(t, p)
	other, err := seal.GenerateKey()
	require.NoError(t, err)
	_, err = c.DirectoryProvider(other.Private, "m1")
	var de *deskrun.Error
	require.True(t, errors.As(err, &de), "%v", err)
	require.Equal(t, deskrun.CodeSealedCredentialInvalid, de.Code)
}

func mustRead(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	return string(b)
}

func TestDiscoverDirectory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sssd := filepath.Join(dir, "sssd.conf")
	require.NoError(t, os.WriteFile(sssd, []byte(`[sssd]
services = nss, pam
domains = test.example, other

[domain/test.example]
id_provider = ldap
ldap_uri = ldaps://127.0.0.3, ldaps://dc2.test.example
ldap_search_base = DC=test,DC=example
ldap_tls_cacert = /tmp/ca.pem
ldap_default_bind_dn = CN=dr_svc,CN=Users,DC=test,DC=example
ldap_default_authtok = Secret-in-clear
krb5_realm = TEST.EXAMPLE
`), 0o600))
	c, err := agent.DiscoverDirectory(identity.HostPaths{SSSDConf: sssd})
	require.NoError(t, err)
	require.Equal(t, &agent.DirectoryConfig{URL: "ldaps://127.0.0.3", CAFile: "/tmp/ca.pem", BaseDN: "DC=test,DC=example",
		Domain: "test.example", Realm: "TEST.EXAMPLE", ServiceDN: "CN=dr_svc,CN=Users,DC=test,DC=example"}, c)

	require.NoError(t, os.WriteFile(sssd, []byte("[sssd]\ndomains = corp.example\n[domain/corp.example]\nid_provider = ad\nad_server = dc1.corp.example\n"), 0o600))
	krb := filepath.Join(dir, "krb5.conf")
	require.NoError(t, os.WriteFile(krb, []byte("[libdefaults]\n\tdefault_realm = CORP.EXAMPLE\n"), 0o600))
	c, err = agent.DiscoverDirectory(identity.HostPaths{SSSDConf: sssd, Krb5Conf: krb})
	require.NoError(t, err)
	require.Equal(t, "ldaps://dc1.corp.example", c.URL)
	require.Equal(t, "CORP.EXAMPLE", c.Realm)

	c, err = agent.DiscoverDirectory(identity.HostPaths{SSSDConf: filepath.Join(dir, "none")})
	require.NoError(t, err)
	require.Nil(t, c)
}
