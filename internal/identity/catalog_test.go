package identity_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
)

// The three codes of the support article the project grew from.
func TestExplainSeedCodes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ query, reason string }{
		{"-1073741477", "LogonTypeNotGranted"},
		{"-1073445812", "UpnFormatInvalid"},
		{"-1073741062", "SmartCardRequired"},
	} {
		es, exact := identity.Explain(c.query)
		require.True(t, exact, c.query)
		require.Len(t, es, 1, c.query)
		require.Equal(t, c.reason, es[0].Reason)
		require.Equal(t, deskrun.CodeWindowsIdentityIncorrect, es[0].Code)
		require.Equal(t, c.query, json.Number(formatInt(es[0].StatusDecimal())).String())
	}
}

func formatInt(v int64) string { b, _ := json.Marshal(v); return string(b) }

func TestExplainForms(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ query, reason string }{
		{"0xC000015B", "LogonTypeNotGranted"},
		{"0xc000015b", "LogonTypeNotGranted"},
		{"3221225819", "LogonTypeNotGranted"},
		{"1385", "LogonTypeNotGranted"},
		{"logontypenotgranted", "LogonTypeNotGranted"},
		{"STATUS_LOGON_TYPE_NOT_GRANTED", "LogonTypeNotGranted"},
		{"LOGON_TYPE_NOT_GRANTED", "LogonTypeNotGranted"},
		{"52e", "WrongPassword"},
		{"data 775", "AccountLockedOut"},
		{"532", "PasswordExpired"},
		{"PAM_ACCT_EXPIRED", "AccountExpired"},
		{"acct_expired", "AccountExpired"},
		{"-1073741711", "PasswordExpired"},
		{"NoCandidateMachine", "NoCandidateMachine"},
		{"AADMachineAlwaysPromptingForPassword", "MSEntraMachineAlwaysPromptingForPassword"},
		{"ClockSkew", "TimeDifferenceAtDC"},
		{"PamServiceMissing", "PamServiceMissing"},
	} {
		es, exact := identity.Explain(c.query)
		require.True(t, exact, c.query)
		var names []string
		for _, e := range es {
			names = append(names, e.Reason)
		}
		require.Contains(t, names, c.reason, c.query)
	}
	es, exact := identity.Explain("PasswordExpird")
	require.False(t, exact)
	require.Equal(t, "PasswordExpired", es[0].Reason)
	es, exact = identity.Explain("0xC0000999")
	require.False(t, exact)
	require.NotEmpty(t, es)
	_, exact = identity.Explain("")
	require.False(t, exact)
}

// Every code of research/powerautomate.md §2.1, §2.2 and §2.4, the request
// codes of error.go, and deskrun's own orchestration codes.
func TestCatalogHoldsEveryCode(t *testing.T) {
	t.Parallel()
	codes := strings.Fields(`
UnsupportedRpaScriptSchemaVersion InvalidUIFlowsCertificates WindowsIdentityIncorrect InvalidConnectionCredentials
NoUnlockedActiveSessionForAttended AttendedUserSessionNotActive AttendedUserNotLoggedIn SessionCreationError
SessionCreationWinLogonFailure SessionCreationInvalidCredentials SessionExistsForTheUserWhenUnattended
UnattendedUserSessionDisconnected UnattendedUserSessionLocked Win10AlreadyHasActiveSession TooManyActiveSessions
SessionNotFound RDPIsNotEnabled RdpPermissionNotGranted AadLogonFailure MSEntraMachineAlwaysPromptingForPassword
AADMachineAlwaysPromptingForPassword MSEntraRemoteDesktopAppConsentRequired MaxRDSessionDurationReached
SessionHasLoggedOffWithMaxIdleTime UIFlowAlreadyRunning LocalPlaybackOrRecordingOngoing ExistingRecordingSession
UnattendedUnsupportedWithOldConnection UIFlowAgentNotAvailable UIFlowAgentLauncherServiceIsNotRunning
UnableToCallCrlEndpoint NoListenerConnected ConnectionNotEstablished DnsError ConnectionTimeout EndpointDoNotExist
GroupIsEmpty NoCandidateMachine XrmMachineGroupNotFound DesktopFlowsActionThrottled DesktopFlowsActionTimeout
OnPremiseDataGatewayNotAvailable AuthTokenNotYetValid TotalChunksMismatch DesktopFlowMalformedMachineResponse
WcfServerCrash ExpiredDesktopFlowConnection PasswordlessTokenExpiry UnallowedTenantForConnectWithSignIn MachineNotJoined
MachineOffline AgentLost DesktopFlowTimeout ConnectionBroken LockoutImminent DesktopFlowFailed Cancelled AgentProtocolTooOld
InvalidRequest MalformedJSON RequestBodyTooLarge NotFound RouteNotFound MethodNotAllowed Conflict Unauthorized Forbidden
InternalError ServiceUnavailable EnrollmentTokenInvalid EnrollmentTokenExpired EnrollmentTokenUsedUp MachineNameTaken
AgentAuthenticationFailed ServerCertificateUntrusted PamServiceMissing`)
	for _, c := range codes {
		_, ok := identity.Lookup(c)
		require.True(t, ok, c)
	}
	statuses := strings.Fields(`0xC000015B 0xC004844C 0xC00002FA 0xC000006D 0xC000005E 0xC000006E 0xC0000070 0xC000006A
0xC0000064 0xC000006F 0xC0000071 0xC0000224 0xC000030C 0xC0000072 0xC0000193 0xC0000234 0xC000018D 0xC000018C
0xC0000199 0xC0000192 0xC00000DF 0xC0000133 0xC0000155 0xC000006C 0xC0000413 0xC0000418 0xC0000388 0xC0000320
0xC000040E 0xC000005F 0xC0000250 0xC0000196 0xC0000259 0xC00A002B 0xC00A0037 0xC0048442`)
	for _, s := range statuses {
		es, exact := identity.Explain(s)
		require.True(t, exact, s)
		require.NotEmpty(t, es, s)
	}
}

func TestCatalogEntriesAreComplete(t *testing.T) {
	t.Parallel()
	definitive := map[string]bool{"WrongPassword": true, "NoSuchUser": true, "AccountDisabled": true,
		"AccountLockedOut": true, "AccountExpired": true, "PasswordExpired": true, "PasswordMustChange": true, "SmartCardRequired": true}
	for _, e := range identity.Catalog() {
		require.NotEmpty(t, e.Message, e.Reason)
		require.NotEmpty(t, e.Resolution, e.Reason)
		require.NotEmpty(t, e.Code, e.Reason)
		require.False(t, e.Retryable && e.Definitive, e.Reason)
		if e.Status != 0 {
			require.Equal(t, int64(int32(e.Status)), e.StatusDecimal())
			require.Equal(t, deskrun.CodeWindowsIdentityIncorrect, e.Code, e.Reason)
		}
		if definitive[e.Reason] {
			require.True(t, e.Definitive, e.Reason)
		}
	}
	e, _ := identity.Lookup("NoLogonServers")
	require.True(t, e.Retryable)
	e, _ = identity.Lookup("InvalidLogonHours")
	require.True(t, e.Schedulable)
	require.False(t, e.Definitive)
}

func TestFail(t *testing.T) {
	t.Parallel()
	p := &deskrun.ProviderResult{Name: "pam", Result: "PAM_NEW_AUTHTOK_REQD", Stage: "acct_mgmt"}
	err := identity.Fail("PasswordExpired", p)
	require.Equal(t, "WindowsIdentityIncorrect", err.Code)
	require.Equal(t, "PasswordExpired", err.Reason)
	require.Equal(t, "0xC0000071", err.Status)
	require.EqualValues(t, -1073741711, err.StatusDecimal)
	require.True(t, err.Definitive)
	require.Same(t, p, err.Provider)
	require.Contains(t, err.Resolution, "passwd")
	require.Equal(t, deskrun.CodeInternal, identity.Fail("NoSuchReason", nil).Code)
}

func TestCheckPassword(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		pw     []byte
		reason string
	}{
		{nil, "EmptyPassword"},
		{[]byte{}, "EmptyPassword"},
		{[]byte("ab\x00cd"), "PasswordFormatInvalid"},
		{make([]byte, 1<<20), "PasswordFormatInvalid"},
		{[]byte(strings.Repeat("x", identity.MaxPasswordBytes+1)), "PasswordFormatInvalid"},
		{[]byte("Secret123!"), ""},
		{[]byte(strings.Repeat("x", identity.MaxPasswordBytes)), ""},
	} {
		err := identity.CheckPassword(c.pw)
		if c.reason == "" {
			require.NoError(t, err)
			continue
		}
		var de *deskrun.Error
		require.ErrorAs(t, err, &de)
		require.Equal(t, c.reason, de.Reason)
		require.False(t, de.Definitive)
	}
}

func TestParseLogonType(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]identity.LogonType{"": "interactive", "Batch": "batch", "network": "network"} {
		got, err := identity.ParseLogonType(in)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	_, err := identity.ParseLogonType("service")
	require.True(t, deskrun.IsCode(err, deskrun.CodeInvalid))
}
