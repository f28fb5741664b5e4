//go:build linux && cgo

package pam_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/pam"
)

func logon(t *testing.T, p *pam.Provider, user, pw string, lt identity.LogonType) (*identity.Result, *deskrun.Error) {
	t.Helper()
	n, err := identity.ParseName(user)
	if err != nil {
		n = identity.Name{Raw: user}
	}
	buf := []byte(pw)
	res, err := p.Logon(context.Background(), identity.Request{Name: n, Password: buf, Type: lt})
	if err == nil {
		return res, nil
	}
	var de *deskrun.Error
	require.ErrorAs(t, err, &de)
	assertNoSecret(t, de, pw)
	return nil, de
}

// assertNoSecret checks that neither the error text nor its JSON holds
// the password.
func assertNoSecret(t *testing.T, de *deskrun.Error, pw string) {
	t.Helper()
	if len(pw) < 4 {
		return
	}
	js, err := json.Marshal(de)
	require.NoError(t, err)
	require.NotContains(t, de.Error(), pw)
	require.False(t, bytes.Contains(js, []byte(pw)), "password in error JSON")
	require.NotContains(t, de.Resolution, pw)
}

func TestLogonReasons(t *testing.T) {
	needFixture(t)
	p := pam.New(pam.Config{Stack: fx.stack, Machine: "test-machine"})
	os.Remove(filepath.Join(fx.stack.FaillockDir, "drt_wrongpw"))
	cases := []struct {
		name, user, pw string
		lt             identity.LogonType
		reason         string
		status         string
		decimal        int64
		stage, result  string
	}{
		{"wrong password", "drt_wrongpw", "Wr0ng-Secret-XYZ", "", "WrongPassword", "0xC000006D", -1073741715, "authenticate", "PAM_AUTH_ERR"},
		{"no such user", "drt_nosuchuser", password, "", "NoSuchUser", "0xC0000064", -1073741724, "authenticate", "PAM_USER_UNKNOWN"},
		{"disabled (usermod -L)", "drt_locked", password, "", "AccountDisabled", "0xC0000072", -1073741710, "authenticate", "PAM_AUTH_ERR"},
		{"account expired", "drt_acctexpired", password, "", "AccountExpired", "0xC0000193", -1073741421, "acct_mgmt", "PAM_ACCT_EXPIRED"},
		{"must change (chage -d 0)", "drt_mustchange", password, "", "PasswordMustChange", "0xC0000224", -1073741276, "acct_mgmt", "PAM_NEW_AUTHTOK_REQD"},
		{"password expired", "drt_pwexpired", password, "", "PasswordExpired", "0xC0000071", -1073741711, "acct_mgmt", "PAM_NEW_AUTHTOK_REQD"},
		{"batch denied by pam_access", "drt_denied_batch", password, identity.LogonBatch, "LogonTypeNotGranted", "0xC000015B", -1073741477, "acct_mgmt", "PAM_PERM_DENIED"},
		{"no logon hours (pam_time)", "drt_denied_time", password, "", "InvalidLogonHours", "0xC000006F", -1073741713, "acct_mgmt", "PAM_PERM_DENIED"},
		{"nologin shell", "drt_nologinshell", password, "", "AccountRestriction", "0xC000006E", -1073741714, "acct_mgmt", "PAM_AUTH_ERR"},
		{"malformed name", "drt_ok@", password, "", "UpnFormatInvalid", "0xC004844C", -1073445812, "", ""},
		{"newline in name", "drt_ok\nroot", password, "", "UpnFormatInvalid", "0xC004844C", -1073445812, "", ""},
		{"empty password", "drt_ok", "", "", "EmptyPassword", "0xC000006E", -1073741714, "", ""},
		{"NUL in password", "drt_ok", "Secret\x00123!", "", "PasswordFormatInvalid", "0xC000000D", -1073741811, "", ""},
		{"1 MB password", "drt_ok", strings.Repeat("p", 1<<20), "", "PasswordFormatInvalid", "0xC000000D", -1073741811, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			res, de := logon(t, p, c.user, c.pw, c.lt)
			require.Nil(t, res)
			require.NotNil(t, de)
			require.Equal(t, deskrun.CodeWindowsIdentityIncorrect, de.Code)
			require.Equal(t, c.reason, de.Reason, "detail: %+v", de.Provider)
			require.Equal(t, c.status, de.Status)
			require.Equal(t, c.decimal, de.StatusDecimal)
			require.Equal(t, "test-machine", de.Machine)
			require.NotEmpty(t, de.Resolution)
			if c.stage == "" {
				require.Nil(t, de.Provider, "refused before PAM")
				return
			}
			require.Equal(t, "pam", de.Provider.Name)
			require.Equal(t, c.stage, de.Provider.Stage)
			require.Equal(t, c.result, de.Provider.Result)
		})
	}
}

func TestLogonSuccess(t *testing.T) {
	needFixture(t)
	p := pam.New(pam.Config{Stack: fx.stack})
	for _, c := range []struct {
		user string
		lt   identity.LogonType
	}{
		{"drt_ok", identity.LogonInteractive},
		{`.\drt_sha512`, identity.LogonNetwork},
		{"drt_denied_batch", identity.LogonInteractive}, // denied batch only
	} {
		res, de := logon(t, p, c.user, password, c.lt)
		require.Nil(t, de, "%s: %v", c.user, de)
		require.Equal(t, strings.TrimPrefix(c.user, `.\`), res.Identity.Username)
		require.NotZero(t, res.Identity.UID)
		require.Contains(t, res.Identity.Groups, res.Identity.GID)
		require.Equal(t, "/bin/bash", res.Identity.Shell)
		require.Equal(t, "/nonexistent", res.Identity.Home)
		require.Empty(t, res.Warnings)
	}
	res, de := logon(t, p, "drt_warn", password, identity.LogonInteractive)
	require.Nil(t, de)
	require.Equal(t, []identity.Warning{{Reason: "PasswordExpiresSoon", Days: 5, Message: "Warning: your password will expire in 5 days."}}, res.Warnings)
}

func TestLogonFaillock(t *testing.T) {
	needFixture(t)
	p := pam.New(pam.Config{Stack: fx.stack})
	os.Remove(filepath.Join(fx.stack.FaillockDir, "drt_faillocked"))
	for i := 0; i < fx.stack.Deny-1; i++ {
		_, de := logon(t, p, "drt_faillocked", "bad-password", "")
		require.Equal(t, "WrongPassword", de.Reason, "attempt %d", i+1)
	}
	_, de := logon(t, p, "drt_faillocked", "bad-password", "")
	require.Equal(t, "AccountLockedOut", de.Reason, "the attempt that reaches deny locks")
	_, de = logon(t, p, "drt_faillocked", password, "")
	require.Equal(t, "AccountLockedOut", de.Reason)
	require.Equal(t, "0xC0000234", de.Status)
	require.EqualValues(t, -1073741260, de.StatusDecimal)
	require.True(t, de.Definitive)
	require.Contains(t, de.Provider.Detail, "locked due to 5 failed logins")
}

func TestLogonNologinFile(t *testing.T) {
	needFixture(t)
	s := fx.stack
	s.PAMDir = filepath.Join(fx.dir, "pam.d-nologin")
	s.NologinFile = filepath.Join(fx.dir, "nologin-on")
	require.NoError(t, os.WriteFile(s.NologinFile, []byte("Maintenance until 18:00."), 0o644))
	_, err := pam.Install(s)
	require.NoError(t, err)
	_, de := logon(t, pam.New(pam.Config{Stack: s}), "drt_ok", password, "")
	require.Equal(t, "AccountRestriction", de.Reason)
	require.Equal(t, "authenticate", de.Provider.Stage)
	require.Contains(t, de.Provider.Detail, "Maintenance until 18:00.")
}

func TestMissingServiceNeverFallsBack(t *testing.T) {
	t.Parallel()
	s := pam.DefaultStack()
	s.PAMDir = t.TempDir()
	for _, lt := range identity.LogonTypes() {
		_, de := logon(t, pam.New(pam.Config{Stack: s}), "root", password, lt)
		require.Equal(t, "PamServiceMissing", de.Code)
		require.Equal(t, "PamServiceMissing", de.Reason)
		require.Contains(t, de.Message, "deskrun-"+string(lt))
		require.Contains(t, de.Resolution, "deskrun agent install-pam")
	}
}

// Directory states this machine cannot reach for real (an offline SSSD, a
// smart-card policy, an offline cached logon) go through a test module
// that answers as pam_sss does, so the mapping runs on PAM's real path.
func TestLogonDirectoryStates(t *testing.T) {
	needFixture(t)
	s := fx.stack
	s.PAMDir = filepath.Join(fx.dir, "pam.d-directory")
	require.NoError(t, os.MkdirAll(s.PAMDir, 0o755))
	write := func(lt identity.LogonType, auth string) {
		body := "auth " + auth + "\naccount required pam_permit.so\nsession required pam_permit.so\n"
		require.NoError(t, os.WriteFile(s.ServiceFile(lt), []byte(body), 0o644))
	}
	write(identity.LogonInteractive, "requisite "+fx.module+" rc=9")                                           // PAM_AUTHINFO_UNAVAIL
	write(identity.LogonBatch, "requisite "+fx.module+" prompt=PIN rc=0")                                      // asks for a PIN
	write(identity.LogonNetwork, "sufficient "+fx.module+" rc=0 [msg=Authenticated with cached credentials.]") // offline success
	joined := identity.JoinInfo{State: deskrun.JoinSSSD, Domain: "corp.example"}
	p := pam.New(pam.Config{Stack: s, Join: joined})

	_, de := logon(t, p, "drt_ok", password, identity.LogonInteractive)
	require.Equal(t, "NoLogonServers", de.Reason)
	require.Equal(t, "0xC000005E", de.Status)
	require.True(t, de.Retryable)
	require.Equal(t, "PAM_AUTHINFO_UNAVAIL", de.Provider.Result)

	_, de = logon(t, p, "drt_ok", password, identity.LogonBatch)
	require.Equal(t, "SmartCardRequired", de.Reason)
	require.EqualValues(t, -1073741062, de.StatusDecimal)
	require.True(t, de.Definitive)

	res, de := logon(t, p, "drt_ok", password, identity.LogonNetwork)
	require.Nil(t, de)
	require.Equal(t, "CachedCredentials", res.Warnings[0].Reason)

	// A domain account the joined machine cannot resolve.
	_, de = logon(t, pam.New(pam.Config{Stack: fx.stack, Join: joined}), `CORP\drt_nobody`, password, "")
	require.Equal(t, "UserNotPropagated", de.Reason)
	_, de = logon(t, pam.New(pam.Config{Stack: fx.stack}), `CORP\drt_nobody`, password, "")
	require.Equal(t, "NoSuchUser", de.Reason)
	require.Contains(t, de.Resolution, "not joined")
}

func TestCheckAccount(t *testing.T) {
	needFixture(t)
	p := pam.New(pam.Config{Stack: fx.stack})
	name := func(s string) identity.Name { n, err := identity.ParseName(s); require.NoError(t, err); return n }
	res, err := p.CheckAccount(context.Background(), name("drt_denied_batch"), identity.LogonInteractive)
	require.NoError(t, err)
	require.Equal(t, "drt_denied_batch", res.Identity.Username)
	_, err = p.CheckAccount(context.Background(), name("drt_denied_batch"), identity.LogonBatch)
	require.Equal(t, "LogonTypeNotGranted", err.(*deskrun.Error).Reason)
	_, err = p.CheckAccount(context.Background(), name("drt_acctexpired"), identity.LogonBatch)
	require.Equal(t, "AccountExpired", err.(*deskrun.Error).Reason)
}

func TestSession(t *testing.T) {
	needFixture(t)
	p := pam.New(pam.Config{Stack: fx.stack})
	pw := []byte(password)
	s, err := p.OpenSession(context.Background(), identity.Request{Name: identity.Name{Raw: "drt_session"}, Password: pw})
	clear(pw)
	require.NoError(t, err)
	require.Equal(t, "drt_session", s.Result().Identity.Username)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close is idempotent")
}

func TestInstallRenders(t *testing.T) {
	t.Parallel()
	s := pam.DefaultStack()
	s.PAMDir, s.ConfigDir = t.TempDir(), t.TempDir()
	require.NoError(t, os.WriteFile(s.AccessFile(identity.LogonBatch), []byte("-:alice:ALL\n"), 0o644))
	_, err := pam.Install(s)
	require.NoError(t, err)
	b, err := os.ReadFile(s.ServiceFile(identity.LogonBatch))
	require.NoError(t, err)
	body := string(b)
	require.NotRegexp(t, `(?m)^@include`, body)
	require.Contains(t, body, "pam_unix.so nodelay")
	require.Contains(t, body, "pam_faillock.so preauth dir=/var/run/faillock deny=5 unlock_time=600 nodelay")
	require.Contains(t, body, "accessfile="+s.AccessFile(identity.LogonBatch))
	kept, _ := os.ReadFile(s.AccessFile(identity.LogonBatch))
	require.Equal(t, "-:alice:ALL\n", string(kept), "an admin's rules are kept")
}

// TestKeepModulesLoaded: with the modules kept loaded, logons succeed and
// fail exactly as without, and the service file is still read at every
// logon (a stack changed on disk applies to the next logon).
func TestKeepModulesLoaded(t *testing.T) {
	needFixture(t)
	dir := t.TempDir()
	st := fx.stack
	st.PAMDir = filepath.Join(dir, "pam.d")
	_, err := pam.Install(st)
	require.NoError(t, err)
	p := pam.New(pam.Config{Stack: st, KeepModulesLoaded: true})
	for range 3 {
		res, de := logon(t, p, "drt_ok", password, identity.LogonInteractive)
		require.Nil(t, de, "%v", de)
		require.Equal(t, "drt_ok", res.Identity.Username)
	}
	// A stack that refuses everyone, written under the running provider.
	svc := st.ServiceFile(identity.LogonInteractive)
	orig, err := os.ReadFile(svc)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(svc, []byte("auth requisite pam_deny.so\naccount required pam_deny.so\n"), 0o644))
	_, de := logon(t, p, "drt_ok", password, identity.LogonInteractive)
	require.NotNil(t, de, "the changed service file applies to the next logon")
	require.NoError(t, os.WriteFile(svc, orig, 0o644))
	_, de = logon(t, p, "drt_ok", password, identity.LogonInteractive)
	require.Nil(t, de, "%v", de)
}
