package ldap

import (
	"errors"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/identity"
)

func adError(code string) error {
	return goldap.NewError(goldap.LDAPResultInvalidCredentials,
		errors.New("80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data "+code+", v1db1\x00"))
}

func TestClassifyADData(t *testing.T) {
	t.Parallel()
	for code, reason := range map[string]string{
		"52e": identity.ReasonWrongPassword, "525": identity.ReasonNoSuchUser, "530": identity.ReasonInvalidLogonHours,
		"531": identity.ReasonInvalidWorkstation, "532": identity.ReasonPasswordExpired, "533": identity.ReasonAccountDisabled,
		"701": identity.ReasonAccountExpired, "773": identity.ReasonPasswordMustChange, "775": identity.ReasonAccountLockedOut,
		"ffff": identity.ReasonWrongPassword, // unknown sub-code: still refused credentials
	} {
		out := classifyBind(adError(code), nil)
		require.Equal(t, reason, out.reason, code)
		require.Equal(t, "49 data "+code, out.result)
		require.NotContains(t, out.detail, "\x00")
		// every reason the map yields is in the catalog, with AD's code
		e, ok := identity.Lookup(reason)
		require.True(t, ok, reason)
		if code != "ffff" {
			require.Equal(t, code, e.ADData, "catalog ADData of %s", reason)
		}
	}
	require.Equal(t, "52e", DataCode("AcceptSecurityContext error, data 52E, v1db1"))
	require.Empty(t, DataCode("invalid credentials"))
}

func TestClassifyPPolicy(t *testing.T) {
	t.Parallel()
	invalid := goldap.NewError(goldap.LDAPResultInvalidCredentials, errors.New(""))
	pp := func(code int8) []goldap.Control {
		return []goldap.Control{&goldap.ControlBeheraPasswordPolicy{Expire: -1, Grace: -1, Error: code}}
	}
	for _, c := range []struct {
		err            error
		ctls           []goldap.Control
		reason, result string
	}{
		{invalid, pp(-1), identity.ReasonWrongPassword, "49"},
		{invalid, nil, identity.ReasonWrongPassword, "49"},
		{invalid, pp(1), identity.ReasonAccountLockedOut, "49 ppolicy accountLocked"},
		{invalid, pp(0), identity.ReasonPasswordExpired, "49 ppolicy passwordExpired"},
		{nil, pp(2), identity.ReasonPasswordMustChange, "0 ppolicy changeAfterReset"},
		{nil, pp(-1), "", "0"},
		{goldap.NewError(goldap.LDAPResultStrongAuthRequired, errors.New("BindSimple: Transport encryption required.")), nil, identity.ReasonDirectoryConfigInvalid, "8"},
		{goldap.NewError(goldap.LDAPResultInvalidDNSyntax, errors.New("invalid DN")), nil, identity.ReasonDirectoryConfigInvalid, "34"},
		{goldap.NewError(goldap.LDAPResultUnavailable, errors.New("")), nil, identity.ReasonNoLogonServers, "52"},
		{goldap.NewError(goldap.ErrorNetwork, errors.New("ldap: connection timed out")), nil, identity.ReasonNoLogonServers, "200"},
	} {
		out := classifyBind(c.err, c.ctls)
		require.Equal(t, c.reason, out.reason, c.result)
		require.Equal(t, c.result, out.result)
	}
}

func TestAccountState(t *testing.T) {
	t.Parallel()
	// 2026-01-01T00:00:00Z as a FILETIME
	const ft = 134116992000000000
	require.Equal(t, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), fileTime(ft))
	require.True(t, fileTime(0).IsZero())
	require.True(t, fileTime(0x7FFFFFFFFFFFFFFF).IsZero())
	require.Equal(t, 10*time.Minute, interval(-6000000000))

	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	s := AccountState{BadPwdCount: 2, BadPasswordTime: now.Add(-5 * time.Minute), LockoutThreshold: 3, LockoutWindow: 10 * time.Minute}
	require.True(t, s.OneFailureFromLockout(now))
	require.False(t, s.OneFailureFromLockout(now.Add(6*time.Minute)), "the window has passed: the next failure counts as the first")
	s.LockoutThreshold = 0
	require.False(t, s.OneFailureFromLockout(now), "threshold 0: accounts never lock")
	s.LockoutThreshold, s.BadPwdCount = 1, 0
	require.False(t, s.OneFailureFromLockout(now), "threshold 1 and no failure yet: refusing would make the account unusable")
	s.LockoutThreshold, s.BadPwdCount = 3, 1
	require.False(t, s.OneFailureFromLockout(now))

	require.Equal(t, 6, daysLeft(now, now.Add(6*24*time.Hour+time.Hour)))
	require.Equal(t, 0, daysLeft(now, now.Add(time.Hour)))
	require.Equal(t, -1, daysLeft(now, now.Add(-time.Hour)))
}
