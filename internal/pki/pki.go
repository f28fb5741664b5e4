// Package pki makes and checks the server's TLS identity: a private CA made
// on first start, a server certificate signed by it, and the SHA-256
// fingerprint of the CA that enrollment tokens carry so an agent trusts
// that CA and no one else (as kubeadm join does).
package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Files in the TLS directory.
const (
	CAFile   = "ca.crt"
	caKey    = "ca.key"
	certFile = "server.crt"
	keyFile  = "server.key"
)

// Server is the server's TLS identity.
type Server struct {
	Cert        tls.Certificate // leaf + CA, so clients that pin the CA see it
	CA          *x509.Certificate
	CAPEM       []byte
	Fingerprint string // hex SHA-256 of the CA's DER
}

// Ensure loads the CA and server certificate from dir, making what is
// missing. The server certificate is re-issued when a configured name is
// not among its SANs, so adding --name never needs a manual step.
func Ensure(dir string, names []string, now time.Time) (*Server, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("tls dir: %w", err)
	}
	caCert, caPriv, err := loadOrMakeCA(dir, now)
	if err != nil {
		return nil, err
	}
	hosts := append([]string{"localhost", "127.0.0.1", "::1"}, names...)
	leaf, leafKey, err := loadLeaf(dir)
	if err != nil || !covers(leaf, hosts) || now.After(leaf.NotAfter.Add(-30*24*time.Hour)) || leaf.CheckSignatureFrom(caCert) != nil {
		leaf, leafKey, err = makeLeaf(dir, caCert, caPriv, hosts, now)
		if err != nil {
			return nil, err
		}
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw})
	return &Server{
		Cert:        tls.Certificate{Certificate: [][]byte{leaf.Raw, caCert.Raw}, PrivateKey: leafKey, Leaf: leaf},
		CA:          caCert,
		CAPEM:       caPEM,
		Fingerprint: Fingerprint(caCert.Raw),
	}, nil
}

// Fingerprint is the hex SHA-256 of a certificate's DER.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func loadOrMakeCA(dir string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cert, key, err := loadPair(filepath.Join(dir, CAFile), filepath.Join(dir, caKey))
	if err == nil {
		return cert, key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("load CA: %w", err)
	}
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "deskrun CA " + now.UTC().Format("2006-01-02")},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	if err := writePair(filepath.Join(dir, CAFile), filepath.Join(dir, caKey), der, key); err != nil {
		return nil, nil, err
	}
	cert, err = x509.ParseCertificate(der)
	return cert, key, err
}

func makeLeaf(dir string, ca *x509.Certificate, caPriv *ecdsa.PrivateKey, hosts []string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "deskrun server"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caPriv)
	if err != nil {
		return nil, nil, err
	}
	if err := writePair(filepath.Join(dir, certFile), filepath.Join(dir, keyFile), der, key); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func loadLeaf(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	return loadPair(filepath.Join(dir, certFile), filepath.Join(dir, keyFile))
}

func covers(c *x509.Certificate, hosts []string) bool {
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(c.IPAddresses, ip.Equal) {
				return false
			}
		} else if h != "" && !slices.Contains(c.DNSNames, h) {
			return false
		}
	}
	return true
}

func loadPair(certPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	if cblk == nil || kblk == nil {
		return nil, nil, fmt.Errorf("%s: not PEM", certPath)
	}
	cert, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParseECPrivateKey(kblk.Bytes)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func writePair(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	kd, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// ErrUntrusted is returned (wrapped) when the server's certificate does
// not chain to the pinned CA.
var ErrUntrusted = errors.New("server certificate is not signed by the pinned CA")

// PinnedConfig returns a client TLS config that trusts exactly the CA
// whose fingerprint is given: the server must present that CA in its
// chain and a leaf it signed, valid for serverName. It is what an agent
// uses before it has stored the CA certificate.
func PinnedConfig(fingerprint, serverName string) *tls.Config {
	want := strings.ToLower(fingerprint)
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         serverName,
		InsecureSkipVerify: true, // replaced by VerifyConnection below, which pins the CA
		VerifyConnection: func(cs tls.ConnectionState) error {
			var ca *x509.Certificate
			for _, c := range cs.PeerCertificates {
				if subtle.ConstantTimeCompare([]byte(Fingerprint(c.Raw)), []byte(want)) == 1 {
					ca = c
				}
			}
			if ca == nil || len(cs.PeerCertificates) == 0 {
				return ErrUntrusted
			}
			pool := x509.NewCertPool()
			pool.AddCert(ca)
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: serverName, Roots: pool})
			if err != nil {
				return fmt.Errorf("%w: %v", ErrUntrusted, err)
			}
			return nil
		},
	}
}

// PoolConfig returns a client TLS config that trusts only the CA in caPEM.
func PoolConfig(caPEM []byte, serverName string) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no CA certificate in PEM")
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, ServerName: serverName}, nil
}

// FingerprintPEM is the fingerprint of the first certificate in a PEM file.
func FingerprintPEM(caPEM []byte) (string, error) {
	b, _ := pem.Decode(bytes.TrimSpace(caPEM))
	if b == nil {
		return "", errors.New("no PEM certificate")
	}
	return Fingerprint(b.Bytes), nil
}
