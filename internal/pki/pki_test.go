package pki

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestEnsureKeepsAndExtends(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	now := time.Now()
	s1, err := Ensure(dir, []string{"deskrun.example"}, now)
	require.NoError(t, err)
	require.Contains(t, s1.Cert.Leaf.DNSNames, "deskrun.example")
	require.Contains(t, s1.Cert.Leaf.DNSNames, "localhost")
	require.True(t, s1.Cert.Leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")))
	fp, err := FingerprintPEM(s1.CAPEM)
	require.NoError(t, err)
	require.Equal(t, s1.Fingerprint, fp)

	s2, err := Ensure(dir, []string{"deskrun.example"}, now)
	require.NoError(t, err)
	require.Equal(t, s1.Fingerprint, s2.Fingerprint, "the CA is kept across restarts")
	require.Equal(t, s1.Cert.Leaf.Raw, s2.Cert.Leaf.Raw)

	s3, err := Ensure(dir, []string{"deskrun.example", "other.example"}, now)
	require.NoError(t, err)
	require.Equal(t, s1.Fingerprint, s3.Fingerprint)
	require.Contains(t, s3.Cert.Leaf.DNSNames, "other.example", "a new name re-issues the leaf")
}

func TestPinnedConfigRefusesOtherCA(t *testing.T) {
	t.Parallel()
	good, err := Ensure(t.TempDir(), nil, time.Now())
	require.NoError(t, err)
	evil, err := Ensure(t.TempDir(), nil, time.Now())
	require.NoError(t, err)

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{evil.Cert}})
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	_, err = tls.Dial("tcp", ln.Addr().String(), PinnedConfig(good.Fingerprint, "127.0.0.1"))
	require.True(t, errors.Is(err, ErrUntrusted), "%v", err)
	c, err := tls.Dial("tcp", ln.Addr().String(), PinnedConfig(evil.Fingerprint, "127.0.0.1"))
	require.NoError(t, err)
	c.Close()
}
