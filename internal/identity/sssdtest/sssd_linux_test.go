//go:build linux && cgo

package sssdtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/ldap"
	"github.com/deskrun/deskrun/internal/identity/pam"
)

const (
	password = "Passw0rd!1"
	domain   = "test.example"
	// dcAddr: the DC of this test binary listens on its own loopback
	// address, so the LDAP provider's tests (127.0.0.1) can run at the
	// same time (go test -p 2).
	dcAddr = "127.0.0.3"
)

var fx struct {
	once              sync.Once
	err               error
	dir               string // parent of dc/, sssd/, pam/
	stack             pam.Stack
	join              identity.JoinInfo
	dirProv           *ldap.Provider
	samba, sssd, torn bool
}

// sssdConf is where test/fixtures/sssd.sh writes the config it starts sssd with.
const sssdConf = "/run/deskrun-sssd/sssd.conf"

func pidAlive(pid string) bool {
	n, err := strconv.Atoi(pid)
	return err == nil && n > 0 && syscall.Kill(n, 0) == nil
}

func fixtureDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "test", "fixtures")
}

func script(name, cmd string) error {
	c := exec.Command("bash", filepath.Join(fixtureDir(), name), cmd)
	c.Env = append(os.Environ(), "SAMBA_DIR="+filepath.Join(fx.dir, "dc"), "SAMBA_ADDR="+dcAddr, "SSSD_WORK="+filepath.Join(fx.dir, "sssd"))
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, cmd, err, out)
	}
	return nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	teardown()
	os.Exit(code)
}

// teardown restores nsswitch.conf and stops sssd and the DC, whatever
// the tests did.
func teardown() {
	if fx.dir == "" || fx.torn {
		return
	}
	if os.Getenv("SSSDTEST_KEEP") != "" { // debugging: leave everything running
		fmt.Fprintf(os.Stderr, "SSSDTEST_KEEP: fixture left in %s\n", fx.dir)
		return
	}
	fx.torn = true
	if fx.sssd {
		if err := script("sssd.sh", "teardown"); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	if fx.samba {
		_ = script("samba-ad.sh", "teardown")
	}
	os.RemoveAll(fx.dir)
	os.Remove(stateFile)
}

// need skips off CI without root (or without apt-get to install SSSD and
// Samba), fails on CI, and sets the fixture up once.
func need(t *testing.T) {
	t.Helper()
	skip := func(why string) {
		if os.Getenv("CI") != "" {
			t.Fatalf("SSSD tests: %s, and CI must run them", why)
		}
		t.Skip("SSSD tests: " + why + " (CI runs them as root)")
	}
	if os.Geteuid() != 0 {
		skip("need root (they start a Samba DC and SSSD and edit /etc/nsswitch.conf)")
	}
	for _, p := range []string{"samba", "sssd"} {
		if _, err := exec.LookPath(p); err != nil {
			if _, err := exec.LookPath("apt-get"); err != nil {
				skip(p + " is not installed and apt-get is unavailable")
			}
		}
	}
	if b, err := os.ReadFile("/run/sssd.pid"); err == nil && fx.dir == "" {
		if _, err := os.Stat(sssdConf); err != nil && pidAlive(strings.TrimSpace(string(b))) {
			skip("this machine runs its own sssd")
		}
	}
	fx.once.Do(func() { fx.err = setup() })
	if fx.err != nil {
		t.Fatalf("sssd fixture: %v", fx.err)
	}
}

// stateFile names the fixture directory of the running test binary, so
// that a run killed before its teardown (go test -timeout, ^C) is cleaned
// up by the next one instead of leaving nsswitch.conf edited.
const stateFile = "/run/deskrun-sssdtest.dir"

func setup() error {
	if b, err := os.ReadFile(stateFile); err == nil {
		if old := strings.TrimSpace(string(b)); strings.HasPrefix(old, os.TempDir()) {
			fx.dir, fx.samba, fx.sssd = old, true, true
			teardown()
			fx.torn = false
		}
	}
	var err error
	if fx.dir, err = os.MkdirTemp("", "deskrun-sssd-"); err != nil {
		return err
	}
	if err := os.WriteFile(stateFile, []byte(fx.dir), 0o600); err != nil {
		return err
	}
	t0 := time.Now()
	fx.samba = true
	if err := script("samba-ad.sh", "setup"); err != nil {
		return err
	}
	if err := script("samba-ad.sh", "sssd-users"); err != nil {
		return err
	}
	t1 := time.Now()
	fx.sssd = true
	if err := script("sssd.sh", "setup"); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "fixture: DC %.1fs, SSSD %.1fs\n", t1.Sub(t0).Seconds(), time.Since(t1).Seconds())
	// What `deskrun agent install-pam --directory sss` writes.
	pd := filepath.Join(fx.dir, "pam")
	fx.stack = pam.Stack{PAMDir: filepath.Join(pd, "pam.d"), ConfigDir: filepath.Join(pd, "config"),
		FaillockDir: filepath.Join(pd, "faillock"), NologinFile: filepath.Join(pd, "nologin"),
		Deny: 5, UnlockTime: 600, Directory: "sss"}
	if _, err := pam.Install(fx.stack); err != nil {
		return err
	}
	// The fixture's sssd reads its own config (sssd -c), not /etc/sssd.
	paths := identity.DefaultHostPaths()
	paths.SSSDConf = sssdConf
	if fx.join, err = identity.DetectJoin(paths); err != nil {
		return err
	}
	if fx.join.State != deskrun.JoinSSSD || fx.join.Domain != domain {
		return fmt.Errorf("join state %+v, want sssd %s", fx.join, domain)
	}
	fx.dirProv = ldap.New(ldap.Config{URL: "ldaps://" + dcAddr, CAFile: filepath.Join(fx.dir, "dc", "tls", "ca.pem"),
		Domain: domain, ServiceDN: "dr_svc@" + domain, ServicePassword: []byte(password), Timeout: 3 * time.Second})
	return nil
}

func provider(withDirectory bool) *pam.Provider {
	cfg := pam.Config{Stack: fx.stack, Join: fx.join, Machine: "sssd-test"}
	if withDirectory {
		cfg.Directory = fx.dirProv
	}
	return pam.New(cfg)
}

func logon(t *testing.T, p *pam.Provider, name, pw string) (*identity.Result, *deskrun.Error, time.Duration) {
	t.Helper()
	n, err := identity.ParseNameOn(name, fx.join.State, fx.join.Domain)
	require.NoError(t, err)
	t0 := time.Now()
	res, err := p.Logon(context.Background(), identity.Request{Name: n, Password: []byte(pw), Type: identity.LogonInteractive})
	d := time.Since(t0)
	if err == nil {
		return res, nil, d
	}
	var de *deskrun.Error
	require.True(t, errors.As(err, &de), "not a deskrun error: %v", err)
	return nil, de, d
}

// failure asserts a refused logon's reason, NTSTATUS and PAM result.
func failure(t *testing.T, p *pam.Provider, name, pw, reason, status, pamResult string) *deskrun.Error {
	t.Helper()
	res, de, d := logon(t, p, name, pw)
	require.Nil(t, res, "%s logged on", name)
	t.Logf("%s: %s %s [%s %s] %s (%v)", name, de.Reason, de.Status, de.Provider.Stage, de.Provider.Result, de.Provider.Detail, d.Round(time.Millisecond))
	require.Equal(t, reason, de.Reason, "detail: %s", de.Provider.Detail)
	require.Equal(t, status, de.Status)
	require.Equal(t, identity.Fail(reason, nil).StatusDecimal, de.StatusDecimal)
	if pamResult != "" {
		require.Equal(t, pamResult, de.Provider.Result)
	}
	require.Equal(t, deskrun.CodeWindowsIdentityIncorrect, de.Code)
	require.NotEmpty(t, de.Resolution)
	return de
}

// runAs starts a command as the identity a logon resolved, as the runner will.
func runAs(t *testing.T, id identity.Identity, args ...string) string {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + id.Home, "USER=" + id.Username}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: id.UID, Gid: id.GID, Groups: id.Groups}}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return strings.TrimSpace(string(out))
}

// TestDomainUsers runs in order: online cases, then the DC stopped, then
// restarted. Each wrong password counts towards the DC's lockout
// threshold (3), so every user gets at most one.
func TestDomainUsers(t *testing.T) {
	need(t)
	p := provider(true)

	t.Run("AD user logs on through pam_sss and runs as itself", func(t *testing.T) {
		res, de, d := logon(t, p, "dr_ok@"+domain, password)
		require.Nil(t, de, "%v", de)
		t.Logf("dr_ok@%s: %+v (%v)", domain, res.Identity, d.Round(time.Millisecond))
		id := res.Identity
		require.Equal(t, "dr_ok", id.Username)
		require.Equal(t, uint32(10001), id.UID)
		require.Equal(t, uint32(10000), id.GID)
		require.Contains(t, id.Groups, uint32(10100), "supplementary group dr_unix from the DC")
		require.Empty(t, res.Warnings)
		require.Equal(t, "10001", runAs(t, id, "id", "-u"))
		require.ElementsMatch(t, []string{"10000", "10100"}, strings.Fields(runAs(t, id, "id", "-G")))
		// The bare name resolves through SSSD too.
		res, de, _ = logon(t, p, "dr_ok", password)
		require.Nil(t, de)
		require.Equal(t, uint32(10001), res.Identity.UID)
	})
	t.Run("wrong password", func(t *testing.T) {
		failure(t, p, "dr_wrongpw@"+domain, "Wrong-Passw0rd", identity.ReasonWrongPassword, "0xC000006D", "PAM_AUTH_ERR")
		_, de, _ := logon(t, p, "dr_wrongpw@"+domain, password) // resets badPwdCount
		require.Nil(t, de)
	})
	// pam_sss answers PAM_PERM_DENIED for all four; the directory says which.
	for _, c := range []struct{ user, reason, status, attr string }{
		{"dr_disabled", identity.ReasonAccountDisabled, "0xC0000072", "userAccountControl 0x202"},
		{"dr_expired", identity.ReasonAccountExpired, "0xC0000193", "accountExpires"},
		{"dr_locked", identity.ReasonAccountLockedOut, "0xC0000234", "msDS-User-Account-Control-Computed 0x10"},
		{"dr_hours", identity.ReasonInvalidLogonHours, "0xC000006F", "logonHours"},
	} {
		t.Run(c.user, func(t *testing.T) {
			de := failure(t, p, c.user+"@"+domain, password, c.reason, c.status, "PAM_PERM_DENIED")
			require.Equal(t, "authenticate", de.Provider.Stage)
			require.Contains(t, de.Provider.Detail, c.attr)
		})
	}
	t.Run("password must change and expired: the directory tells them apart", func(t *testing.T) {
		failure(t, p, "dr_mustchange@"+domain, password, identity.ReasonPasswordMustChange, "0xC0000224", "PAM_NEW_AUTHTOK_REQD")
		failure(t, p, "dr_pwexpired@"+domain, password, identity.ReasonPasswordExpired, "0xC0000071", "PAM_NEW_AUTHTOK_REQD")
	})
	t.Run("smart card required", func(t *testing.T) {
		failure(t, p, "dr_smartcard@"+domain, password, identity.ReasonSmartCardRequired, "0xC00002FA", "PAM_AUTH_ERR")
	})
	t.Run("unknown users", func(t *testing.T) {
		// Not in the directory: NoSuchUser (the directory is authoritative).
		failure(t, p, "nosuchuser@"+domain, password, identity.ReasonNoSuchUser, "0xC0000064", "")
		// In the directory but invisible to NSS (no uidNumber): not propagated.
		de := failure(t, p, "dr_ws@"+domain, password, identity.ReasonUserNotPropagated, "0xC0000064", "")
		require.True(t, de.Retryable)
		// Without a directory the machine cannot tell: UserNotPropagated.
		failure(t, provider(false), "nosuchuser@"+domain, password, identity.ReasonUserNotPropagated, "0xC0000064", "")
	})
	t.Run("without a directory pam_sss's refusal stays generic", func(t *testing.T) {
		de := failure(t, provider(false), "dr_disabled@"+domain, password, identity.ReasonAccountRestriction, "0xC000006E", "PAM_PERM_DENIED")
		require.Contains(t, de.Provider.Detail, "pam_sss refused without saying why")
	})

	// Known to SSSD (resolved) but never logged on: no cached password.
	_, err := user.Lookup("dr_cached@" + domain)
	require.NoError(t, err)

	t.Run("DC stopped", func(t *testing.T) {
		require.NoError(t, script("samba-ad.sh", "stop"))
		res, de, d := logon(t, p, "dr_ok@"+domain, password)
		require.Nil(t, de, "cached logon")
		t.Logf("dr_ok offline: %+v (%v)", res.Warnings, d.Round(time.Millisecond))
		require.Len(t, res.Warnings, 1)
		require.Equal(t, identity.ReasonCachedCredentials, res.Warnings[0].Reason)
		require.Equal(t, uint32(10001), res.Identity.UID)
		require.Equal(t, "10001", runAs(t, res.Identity, "id", "-u"))

		de = failure(t, p, "dr_cached@"+domain, password, identity.ReasonNoLogonServers, "0xC000005E", "PAM_PERM_DENIED")
		require.True(t, de.Retryable)
		require.False(t, de.Definitive)
		// The directory itself is unreachable too.
		err := fx.dirProv.AccountStatus(context.Background(), identity.Name{Kind: identity.KindUPN, User: "dr_ok", Domain: domain, Raw: "dr_ok@" + domain})
		var le *deskrun.Error
		require.True(t, errors.As(err, &le), "%v", err)
		require.Equal(t, identity.ReasonNoLogonServers, le.Reason)
	})
	t.Run("DC restarted: works again without an update", func(t *testing.T) {
		require.NoError(t, script("samba-ad.sh", "start"))
		t0 := time.Now()
		dr := identity.Name{Kind: identity.KindUPN, User: "dr_ok", Domain: domain, Raw: "dr_ok@" + domain}
		for fx.dirProv.AccountStatus(context.Background(), dr) != nil && time.Since(t0) < 10*time.Second {
			time.Sleep(200 * time.Millisecond)
		}
		require.NoError(t, fx.dirProv.AccountStatus(context.Background(), dr), "the directory provider reconnects by itself")
		t.Logf("directory answers again %v after the DC's ports opened", time.Since(t0).Round(time.Millisecond))
		// Before SSSD is told, it may still be offline: NoLogonServers, retryable.
		if _, de, _ := logon(t, p, "dr_cached@"+domain, password); de != nil {
			t.Logf("before SIGUSR2: %s: %s", de.Reason, de.Provider.Detail)
			require.Equal(t, identity.ReasonNoLogonServers, de.Reason)
			require.True(t, de.Retryable)
		}
		require.NoError(t, script("sssd.sh", "online"))
		var res *identity.Result
		var de *deskrun.Error
		deadline := time.Now().Add(15 * time.Second)
		for {
			res, de, _ = logon(t, p, "dr_cached@"+domain, password)
			if de == nil || !de.Retryable || time.Now().After(deadline) {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		require.Nil(t, de, "dr_cached after the DC came back: %v", de)
		require.Empty(t, res.Warnings, "online logon, not cached")
		require.Equal(t, uint32(10011), res.Identity.UID)
		// The same directory provider reaches the DC again.
		failure(t, p, "dr_disabled@"+domain, password, identity.ReasonAccountDisabled, "0xC0000072", "PAM_PERM_DENIED")
	})
	t.Run("SSSD stopped", func(t *testing.T) {
		require.NoError(t, script("sssd.sh", "stop"))
		defer func() { require.NoError(t, script("sssd.sh", "start")) }()
		de := failure(t, p, "dr_ok@"+domain, password, identity.ReasonNoLogonServers, "0xC000005E", "PAM_AUTHINFO_UNAVAIL")
		require.Contains(t, de.Message, "SSSD on this machine does not answer")
	})
}
