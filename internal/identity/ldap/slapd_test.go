package ldap_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/ldap"
)

// OpenLDAP with ppolicy (test/fixtures/slapd-ppolicy.sh): a directory that
// binds DNs only and explains refusals in the password-policy control.
var slapd struct {
	once sync.Once
	dir  string
	ca   []byte
	err  error
}

func needSlapd(tb testing.TB) {
	tb.Helper()
	needRoot(tb, "slapd", "OpenLDAP tests")
	slapd.once.Do(func() {
		parent, err := os.MkdirTemp("", "deskrun-slapd-")
		if err != nil {
			slapd.err = err
			return
		}
		slapd.dir = filepath.Join(parent, "slapd")
		_, file, _, _ := runtime.Caller(0)
		c := exec.Command("bash", filepath.Join(filepath.Dir(file), "..", "..", "..", "test", "fixtures", "slapd-ppolicy.sh"), "setup")
		c.Env = append(os.Environ(), "SLAPD_DIR="+slapd.dir)
		if out, err := c.CombinedOutput(); err != nil {
			slapd.err = err
			tb.Logf("%s", out)
			return
		}
		slapd.ca, slapd.err = os.ReadFile(filepath.Join(slapd.dir, "tls", "ca.pem"))
	})
	if slapd.err != nil {
		tb.Fatalf("slapd fixture: %v", slapd.err)
	}
}

func teardownSlapd() {
	if slapd.dir == "" {
		return
	}
	_, file, _, _ := runtime.Caller(0)
	c := exec.Command("bash", filepath.Join(filepath.Dir(file), "..", "..", "..", "test", "fixtures", "slapd-ppolicy.sh"), "teardown")
	c.Env = append(os.Environ(), "SLAPD_DIR="+slapd.dir)
	_ = c.Run()
	os.RemoveAll(filepath.Dir(slapd.dir))
}

func slapdConfig(service bool) ldap.Config {
	cfg := ldap.Config{URL: "ldaps://127.0.0.1:3636", CAPEM: slapd.ca, Domain: "test.example",
		Machine: "test-machine", Timeout: 5 * time.Second}
	if service {
		cfg.ServiceDN = "uid=ol_svc,ou=people,dc=test,dc=example"
		cfg.ServicePassword = []byte(password)
	}
	return cfg
}

func TestOpenLDAPNeedsServiceAccount(t *testing.T) {
	t.Parallel()
	needSlapd(t)
	_, de := logon(t, ldap.New(slapdConfig(false)), "ol_ok@test.example", password)
	requireFailure(t, de, want{"DirectoryConfigInvalid", "", 0, "bind", "34"})
	require.Contains(t, de.Message, "binds DNs only")
}

func TestOpenLDAPPPolicy(t *testing.T) {
	t.Parallel()
	needSlapd(t)
	p := ldap.New(slapdConfig(true))
	for _, user := range []string{"ol_ok@test.example", `TEST\ol_ok`} {
		res, de := logon(t, p, user, password)
		require.Nil(t, de, "%s: %v", user, de)
		require.Equal(t, "ol_ok", res.Identity.Username)
		require.Empty(t, res.Warnings)
	}
	for _, c := range []struct {
		user, pw string
		want     want
	}{
		{"ol_wrongpw@test.example", "Wr0ng-Passw0rd!", want{"WrongPassword", "0xC000006D", -1073741715, "bind", "49"}},
		{"ol_locked@test.example", password, want{"AccountLockedOut", "0xC0000234", -1073741260, "bind", "49 ppolicy accountLocked"}},
		{`TEST\ol_expired`, password, want{"PasswordExpired", "0xC0000071", -1073741711, "bind", "49 ppolicy passwordExpired"}},
		{"ol_reset@test.example", password, want{"PasswordMustChange", "0xC0000224", -1073741276, "bind", "0 ppolicy changeAfterReset"}},
		{"ol_nobody@test.example", password, want{"NoSuchUser", "0xC0000064", -1073741724, "search", "no entry"}},
	} {
		res, de := logon(t, p, c.user, c.pw)
		require.Nil(t, res, c.user)
		requireFailure(t, de, c.want)
	}
	res, de := logon(t, p, "ol_warn@test.example", password)
	require.Nil(t, de)
	require.Len(t, res.Warnings, 1)
	require.Equal(t, identity.ReasonPasswordExpiresSoon, res.Warnings[0].Reason)
	require.Contains(t, []int{4, 5}, res.Warnings[0].Days)
}
