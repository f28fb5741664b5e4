package ldap_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/identity/ldap"
)

// requireNoLogonServers: the transient outage, retryable, and not a reason
// to stop using the connection's credentials.
func requireNoLogonServers(t *testing.T, p *ldap.Provider, stage string) string {
	t.Helper()
	_, de := logon(t, p, "dr_ok@test.example", password)
	requireFailure(t, de, want{"NoLogonServers", "0xC000005E", -1073741730, stage, "error"})
	require.True(t, de.Retryable)
	require.False(t, de.Definitive)
	return de.Provider.Detail
}

func TestUnresolvableDC(t *testing.T) {
	t.Parallel()
	cfg := ldap.Config{URL: "ldaps://dc1.nowhere.test", Domain: "test.example", Machine: "test-machine",
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: "no such host", Name: "dc1.nowhere.test", IsNotFound: true}}
		}}
	detail := requireNoLogonServers(t, ldap.New(cfg), "connect")
	require.Contains(t, detail, "dns: lookup dc1.nowhere.test")
}

func TestNothingListening(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	cfg := ldap.Config{URL: "ldaps://" + addr, Domain: "test.example", Machine: "test-machine"}
	detail := requireNoLogonServers(t, ldap.New(cfg), "connect")
	require.Contains(t, detail, "connection refused")
}

func TestSilentDC(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // accept, never answer
		}
	}()
	cfg := ldap.Config{URL: "ldaps://" + l.Addr().String(), Domain: "test.example", Machine: "test-machine", Timeout: 200 * time.Millisecond}
	requireNoLogonServers(t, ldap.New(cfg), "tls")
}

func TestUntrustedCertificate(t *testing.T) {
	t.Parallel()
	needDC(t)
	cfg := config(true)
	cfg.CAPEM = nil // system roots do not know the fixture's CA
	_, de := logon(t, ldap.New(cfg), "dr_ok@test.example", password)
	requireFailure(t, de, want{"DirectoryConfigInvalid", "", 0, "tls", "error"})
	require.False(t, de.Retryable)
	require.Contains(t, de.Provider.Detail, "certificate")

	cfg = config(false)
	cfg.ServerName = "dc9.elsewhere.example" // not among the certificate's names
	_, de = logon(t, ldap.New(cfg), "dr_ok@test.example", password)
	requireFailure(t, de, want{"DirectoryConfigInvalid", "", 0, "tls", "error"})
}

// Not parallel: it stops the DC that the parallel tests use (they run after
// every sequential test of the package has finished).
func TestDCStoppedAndRestarted(t *testing.T) {
	needDC(t)
	p := ldap.New(config(true))
	_, de := logon(t, p, "dr_ok@test.example", password)
	require.Nil(t, de)

	require.NoError(t, fixture("stop"))
	restarted := false
	defer func() {
		if !restarted {
			_ = fixture("start")
		}
	}()
	requireNoLogonServers(t, p, "connect")
	requireNoLogonServers(t, ldap.New(config(false)), "connect")

	require.NoError(t, fixture("start"))
	restarted = true
	res, de := logon(t, p, "dr_ok@test.example", password)
	require.Nil(t, de, "after restart: %v", de)
	require.Equal(t, "dr_ok", res.Identity.Username)
}
