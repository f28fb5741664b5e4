package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/pki"
	"github.com/deskrun/deskrun/internal/wire"
)

// EnrollOptions says how to enroll.
type EnrollOptions struct {
	Token    string // dre1_…
	Name     string // default: the hostname
	StateDir string
	Info     wire.MachineInfo
	// Force replaces an existing identity in StateDir.
	Force bool
}

// Enroll makes the agent's keys, registers the machine with the server
// named in the token (trusting only the CA the token pins), and saves the
// identity. Keys are written only after the server accepted them.
func Enroll(ctx context.Context, o EnrollOptions) (*wire.Machine, error) {
	tok, err := wire.ParseEnrollmentToken(o.Token)
	if err != nil {
		return nil, err
	}
	if _, err := LoadIdentity(o.StateDir); err == nil && !o.Force {
		return nil, &deskrun.Error{Code: deskrun.CodeConflict, Message: "this agent is already enrolled (state in " + o.StateDir + ")",
			Resolution: "Use --force to enroll again with new keys, or `deskrun agent run` to connect."}
	}
	u, err := url.Parse(tok.URL)
	if err != nil || u.Scheme != "https" {
		return nil, &deskrun.Error{Code: deskrun.CodeEnrollmentTokenInvalid, Message: "the token's server URL is not https"}
	}
	k, err := newKeys()
	if err != nil {
		return nil, err
	}
	if o.Name == "" {
		o.Name = o.Info.Hostname
	}
	tlsCfg := pki.PinnedConfig(tok.CAFingerprint, u.Hostname())
	var caPEM []byte
	base := tlsCfg.VerifyConnection
	tlsCfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := base(cs); err != nil {
			return err
		}
		for _, c := range cs.PeerCertificates {
			if pki.Fingerprint(c.Raw) == strings.ToLower(tok.CAFingerprint) {
				caPEM = pemCert(c.Raw)
			}
		}
		return nil
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	req := wire.EnrollRequest{TokenID: tok.ID, Secret: tok.Secret, Name: o.Name, Info: o.Info,
		SigningKey: []byte(k.signing.Public().(ed25519.PublicKey)), SealKey: k.seal.Public}
	body, _ := json.Marshal(req)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(tok.URL, "/")+"/api/v1/agent/enroll", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(hreq)
	if err != nil {
		if errors.Is(err, pki.ErrUntrusted) {
			return nil, untrusted(tok.URL)
		}
		return nil, fmt.Errorf("enroll at %s: %w", tok.URL, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusCreated {
		return nil, wire.DecodeError(resp.StatusCode, "POST "+tok.URL+"/api/v1/agent/enroll", rb)
	}
	var out wire.EnrollResponse
	if err := json.Unmarshal(rb, &out); err != nil {
		return nil, fmt.Errorf("enroll: malformed answer: %w", err)
	}
	id := &Identity{ServerURL: tok.URL, MachineID: out.Machine.ID, Name: out.Machine.Name, CAPEM: caPEM}
	if err := id.save(o.StateDir, k); err != nil {
		return nil, fmt.Errorf("save agent identity: %w", err)
	}
	return &out.Machine, nil
}

func untrusted(u string) error {
	return &deskrun.Error{Code: deskrun.CodeServerCertificateUntrusted,
		Message:    "the server at " + u + " did not present a certificate signed by the CA pinned in the token; the agent refuses to talk to it",
		Resolution: "Check that the token's URL reaches your deskrun server (not a proxy that terminates TLS), or create a new token on the right server."}
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
