package ldap_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/ldap"
)

func TestAccountStateClock(t *testing.T) {
	t.Parallel()
	// Tuesday 2026-12-01 09:30 UTC: hour 2*24+9 = 57 of the week, byte 7 bit 1.
	now := time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC)
	hours := make([]byte, 21)
	s := ldap.AccountState{LogonHours: hours}
	require.True(t, s.OutsideLogonHours(now))
	hours[7] = 1 << 1
	require.False(t, s.OutsideLogonHours(now))
	require.True(t, s.OutsideLogonHours(now.Add(time.Hour)))
	require.False(t, ldap.AccountState{}.OutsideLogonHours(now), "no logonHours: every hour")

	require.False(t, ldap.AccountState{}.Expired(now))
	require.True(t, ldap.AccountState{AccountExpires: now}.Expired(now))
	require.False(t, ldap.AccountState{AccountExpires: now.Add(time.Minute)}.Expired(now))
}

// AccountStatus against the fixture DC: each state user's reason, read
// with the service account and without the user's password.
func TestAccountStatus(t *testing.T) {
	needDC(t)
	p := ldap.New(config(true))
	upn := func(u string) identity.Name {
		return identity.Name{Kind: identity.KindUPN, User: u, Domain: "test.example", Raw: u + "@test.example"}
	}
	for user, want := range map[string]string{
		"dr_ok":         "",
		"dr_disabled":   identity.ReasonAccountDisabled,
		"dr_expired":    identity.ReasonAccountExpired,
		"dr_locked":     identity.ReasonAccountLockedOut,
		"dr_hours":      identity.ReasonInvalidLogonHours,
		"dr_smartcard":  identity.ReasonSmartCardRequired,
		"dr_mustchange": identity.ReasonPasswordMustChange,
		"dr_pwexpired":  identity.ReasonPasswordExpired,
		"dr_nobody":     identity.ReasonNoSuchUser,
	} {
		err := p.AccountStatus(context.Background(), upn(user))
		if want == "" {
			require.NoError(t, err, user)
			continue
		}
		var de *deskrun.Error
		require.True(t, errors.As(err, &de), "%s: %v", user, err)
		require.Equal(t, want, de.Reason, user)
	}
	require.ErrorIs(t, ldap.New(config(false)).AccountStatus(context.Background(), upn("dr_ok")), ldap.ErrNoServiceAccount)

	pr, err := p.Probe(context.Background(), "")
	require.NoError(t, err)
	require.True(t, pr.ServiceBound)
	require.Less(t, pr.Skew.Abs(), 5*time.Second, "the DC runs on this machine's clock")
	for _, a := range ldap.NeededAttributes {
		require.True(t, pr.Readable[a], "%s readable on %s", a, pr.Sample)
	}
}
