package ldap_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/ldap"
)

func logon(t *testing.T, p *ldap.Provider, user, pw string) (*identity.Result, *deskrun.Error) {
	t.Helper()
	n, err := identity.ParseName(user)
	if err != nil {
		n = identity.Name{Raw: user}
	}
	res, err := p.Logon(context.Background(), identity.Request{Name: n, Password: []byte(pw), Type: identity.LogonNetwork})
	if err == nil {
		return res, nil
	}
	var de *deskrun.Error
	require.ErrorAs(t, err, &de)
	if len(pw) >= 4 {
		js, jerr := json.Marshal(de)
		require.NoError(t, jerr)
		require.False(t, bytes.Contains(js, []byte(pw)), "password in error JSON")
	}
	return nil, de
}

type want struct {
	reason  string
	status  string
	decimal int64
	stage   string
	result  string
}

func requireFailure(t *testing.T, de *deskrun.Error, w want) {
	t.Helper()
	require.NotNil(t, de, "logon succeeded, want %s", w.reason)
	require.Equal(t, w.reason, de.Reason, "provider: %+v", de.Provider)
	require.Equal(t, w.status, de.Status)
	require.Equal(t, w.decimal, de.StatusDecimal)
	require.Equal(t, "test-machine", de.Machine)
	require.NotEmpty(t, de.Resolution)
	if w.stage == "" {
		require.Nil(t, de.Provider, "refused before any network call")
		return
	}
	require.NotNil(t, de.Provider)
	require.Equal(t, "ldap", de.Provider.Name)
	require.Equal(t, w.stage, de.Provider.Stage)
	require.Equal(t, w.result, de.Provider.Result, "detail: %s", de.Provider.Detail)
}

// Every AD refusal, provoked for real on the fixture DC, through a bind
// alone (no service account): the DC's own data code decides.
func TestBindReasons(t *testing.T) {
	t.Parallel()
	needDC(t)
	p := ldap.New(config(false))
	wii := deskrun.CodeWindowsIdentityIncorrect
	for _, c := range []struct {
		user string
		want want
	}{
		{"dr_wrongpw@test.example", want{"WrongPassword", "0xC000006D", -1073741715, "bind", "49 data 52e"}},
		{`TEST\dr_wrongpw`, want{"WrongPassword", "0xC000006D", -1073741715, "bind", "49 data 52e"}},
		{"dr_mustchange@test.example", want{"PasswordMustChange", "0xC0000224", -1073741276, "bind", "49 data 773"}},
		{`TEST\dr_mustchange`, want{"PasswordMustChange", "0xC0000224", -1073741276, "bind", "49 data 773"}},
		{"dr_pwexpired@test.example", want{"PasswordExpired", "0xC0000071", -1073741711, "bind", "49 data 532"}},
		{"dr_disabled@test.example", want{"AccountDisabled", "0xC0000072", -1073741710, "bind", "49 data 533"}},
		{`TEST\dr_disabled`, want{"AccountDisabled", "0xC0000072", -1073741710, "bind", "49 data 533"}},
		{"dr_expired@test.example", want{"AccountExpired", "0xC0000193", -1073741421, "bind", "49 data 701"}},
		{"dr_locked@test.example", want{"AccountLockedOut", "0xC0000234", -1073741260, "bind", "49 data 775"}},
		{`TEST\dr_locked`, want{"AccountLockedOut", "0xC0000234", -1073741260, "bind", "49 data 775"}},
		{"dr_hours@test.example", want{"InvalidLogonHours", "0xC000006F", -1073741713, "bind", "49 data 530"}},
		{"dr_ws@test.example", want{"InvalidWorkstation", "0xC0000070", -1073741712, "bind", "49 data 531"}},
		// Without a service account Samba's answers are all a bind gives:
		// 52e for a smart-card account (random password) and an unknown name.
		{"dr_smartcard@test.example", want{"WrongPassword", "0xC000006D", -1073741715, "bind", "49 data 52e"}},
		{"dr_nobody@test.example", want{"WrongPassword", "0xC000006D", -1073741715, "bind", "49 data 52e"}},
	} {
		pw := password
		if c.want.reason == "WrongPassword" {
			pw = "Wr0ng-Passw0rd!"
		}
		res, de := logon(t, p, c.user, pw)
		require.Nil(t, res, c.user)
		requireFailure(t, de, c.want)
		require.Equal(t, wii, de.Code)
		require.Contains(t, de.Provider.Detail, "AcceptSecurityContext error, data")
	}
}

// With the service account, the account's state is read first: refusals
// the bind cannot explain become precise, without sending the password.
func TestStateReasons(t *testing.T) {
	t.Parallel()
	needDC(t)
	p := ldap.New(config(true))
	for _, c := range []struct {
		user string
		want want
	}{
		{"dr_smartcard@test.example", want{"SmartCardRequired", "0xC00002FA", -1073741062, "account", "userAccountControl 0x40200"}},
		{`TEST\dr_smartcard`, want{"SmartCardRequired", "0xC00002FA", -1073741062, "account", "userAccountControl 0x40200"}},
		{"dr_nobody@test.example", want{"NoSuchUser", "0xC0000064", -1073741724, "search", "no entry"}},
		{`TEST\dr_nobody`, want{"NoSuchUser", "0xC0000064", -1073741724, "search", "no entry"}},
		{"dr_locked@test.example", want{"AccountLockedOut", "0xC0000234", -1073741260, "account", "msDS-User-Account-Control-Computed 0x10"}},
		// The rest still come from the bind.
		{"dr_mustchange@test.example", want{"PasswordMustChange", "0xC0000224", -1073741276, "bind", "49 data 773"}},
		{"dr_pwexpired@test.example", want{"PasswordExpired", "0xC0000071", -1073741711, "bind", "49 data 532"}},
		{`TEST\dr_expired`, want{"AccountExpired", "0xC0000193", -1073741421, "bind", "49 data 701"}},
		{`TEST\dr_hours`, want{"InvalidLogonHours", "0xC000006F", -1073741713, "bind", "49 data 530"}},
		{`TEST\dr_ws`, want{"InvalidWorkstation", "0xC0000070", -1073741712, "bind", "49 data 531"}},
	} {
		smart := badPwdCount(t, "dr_smartcard")
		res, de := logon(t, p, c.user, password)
		require.Nil(t, res, c.user)
		requireFailure(t, de, c.want)
		if c.want.reason == "SmartCardRequired" {
			require.Equal(t, smart, badPwdCount(t, "dr_smartcard"), "no bind was attempted")
		}
	}
}

func TestSuccessBothForms(t *testing.T) {
	t.Parallel()
	needDC(t)
	for _, service := range []bool{false, true} {
		p := ldap.New(config(service))
		for _, user := range []string{"dr_ok@test.example", `TEST\dr_ok`, `test\dr_ok2`, "dr_ok2@TEST.EXAMPLE"} {
			res, de := logon(t, p, user, password)
			require.Nil(t, de, "%s (service %v): %v", user, service, de)
			require.NotNil(t, res)
			require.Contains(t, []string{"dr_ok", "dr_ok2"}, res.Identity.Username)
			require.Empty(t, res.Warnings, "the domain's max age is 42 days; these passwords are new")
		}
	}
}

func TestStartTLS(t *testing.T) {
	t.Parallel()
	needDC(t)
	cfg := config(true)
	cfg.URL, cfg.StartTLS = "ldap://127.0.0.1:389", true
	res, de := logon(t, ldap.New(cfg), "dr_ok@test.example", password)
	require.Nil(t, de)
	require.Equal(t, "dr_ok", res.Identity.Username)
}

// dr_warn was created 35 days ago; the domain's maximum password age is
// 42 days, so the password expires in 6 or 7 days.
func TestPasswordExpiresSoon(t *testing.T) {
	t.Parallel()
	needDC(t)
	for _, service := range []bool{false, true} {
		res, de := logon(t, ldap.New(config(service)), `TEST\dr_warn`, password)
		require.Nil(t, de)
		require.Len(t, res.Warnings, 1, "service account %v", service)
		w := res.Warnings[0]
		require.Equal(t, identity.ReasonPasswordExpiresSoon, w.Reason)
		require.Contains(t, []int{6, 7}, w.Days)
		require.Contains(t, w.Message, "expires in")
	}
	cfg := config(true)
	cfg.WarnDays = 3
	res, de := logon(t, ldap.New(cfg), `TEST\dr_warn`, password)
	require.Nil(t, de)
	require.Empty(t, res.Warnings, "7 days left is outside a 3-day window")
}

// The lockout guard: the domain locks at 3 failures; after 2 the provider
// refuses to bind, and badPwdCount never reaches 3.
func TestLockoutGuard(t *testing.T) {
	t.Parallel()
	needDC(t)
	p := ldap.New(config(true))
	const user = "dr_guard"
	require.Equal(t, 0, badPwdCount(t, user))
	for i, name := range []string{"dr_guard@test.example", `TEST\dr_guard`} {
		_, de := logon(t, p, name, "Wr0ng-Passw0rd!")
		requireFailure(t, de, want{"WrongPassword", "0xC000006D", -1073741715, "bind", "49 data 52e"})
		require.Equal(t, i+1, badPwdCount(t, user))
	}
	for _, pw := range []string{"Wr0ng-Passw0rd!", password} {
		_, de := logon(t, p, "dr_guard@test.example", pw)
		require.NotNil(t, de)
		require.Equal(t, identity.ReasonLockoutImminent, de.Reason)
		require.Equal(t, identity.ReasonLockoutImminent, de.Code)
		require.False(t, de.Retryable)
		require.Equal(t, "account", de.Provider.Stage)
		require.Equal(t, "badPwdCount 2 threshold 3", de.Provider.Result)
		require.Contains(t, de.Message, "one more would lock it")
		require.Contains(t, de.Resolution, "badPwdCount")
		require.Equal(t, 2, badPwdCount(t, user), "the guard must not bind")
	}
	require.Contains(t, []string{"", "0"}, adminAttr(t, user, "lockoutTime"), "never locked")
}

func TestRefusedBeforeNetwork(t *testing.T) {
	t.Parallel()
	dials := 0
	cfg := ldap.Config{URL: "ldaps://dc1.test.example", Domain: "test.example", Machine: "test-machine",
		Dial: func(context.Context, string, string) (net.Conn, error) {
			dials++
			return nil, errors.New("no network in this test")
		}}
	p := ldap.New(cfg)
	for _, c := range []struct {
		user, pw string
		want     want
	}{
		{"alice@test.example", "", want{"EmptyPassword", "0xC000006E", -1073741714, "", ""}},
		{`TEST\alice`, "a\x00b", want{"PasswordFormatInvalid", "0xC000000D", -1073741811, "", ""}},
		{"alice", password, want{"UpnFormatInvalid", "0xC004844C", -1073445812, "", ""}},
		{`.\alice`, password, want{"UpnFormatInvalid", "0xC004844C", -1073445812, "", ""}},
		{"alice@", password, want{"UpnFormatInvalid", "0xC004844C", -1073445812, "", ""}},
	} {
		_, de := logon(t, p, c.user, c.pw)
		requireFailure(t, de, c.want)
	}
	require.Zero(t, dials)
	_, de := logon(t, p, "alice", password)
	require.Contains(t, de.Resolution, `"user@test.example" or "TEST\user"`)
}

// A refused service password is used once, then no more: retrying it on
// every logon would lock the service account out.
func TestServiceAccountRefused(t *testing.T) {
	t.Parallel()
	needDC(t)
	cfg := config(true)
	cfg.ServiceDN, cfg.ServicePassword = `TEST\dr_svc2`, []byte("Wr0ng-Service!")
	p := ldap.New(cfg)
	for range 3 {
		res, de := logon(t, p, "dr_ok2@test.example", password)
		require.Nil(t, de, "logons go on without the state checks: %v", de)
		require.Equal(t, "dr_ok2", res.Identity.Username)
	}
	require.Equal(t, 1, badPwdCount(t, "dr_svc2"))
}
