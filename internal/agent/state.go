// Package agent is the runtime on a target machine: it enrolls with a
// server, keeps its keys, dials out over one WebSocket (it never listens),
// proves who it is by signing the server's challenge, heartbeats, and runs
// the jobs the server pushes, keeping each one's result on disk until the
// server acknowledges it, so a result survives a server restart.
package agent

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/deskrun/deskrun/internal/seal"
)

// State files in the agent's state directory.
const (
	stateFile   = "agent.json"
	caFile      = "ca.crt"
	signingFile = "signing.key"
	sealFile    = "seal.key"
	jobsDir     = "jobs"
)

// Identity is what enrollment leaves in the state directory.
type Identity struct {
	ServerURL string `json:"server_url"`
	MachineID string `json:"machine_id"`
	Name      string `json:"name"`

	CAPEM      []byte             `json:"-"`
	SigningKey ed25519.PrivateKey `json:"-"`
	SealKey    []byte             `json:"-"` // HPKE private key
}

// ErrNotEnrolled is returned by LoadIdentity for an empty state directory.
var ErrNotEnrolled = errors.New("this agent is not enrolled: run `deskrun agent enroll --token T` first")

// LoadIdentity reads the agent's identity and keys.
func LoadIdentity(dir string) (*Identity, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotEnrolled
	}
	if err != nil {
		return nil, fmt.Errorf("agent state: %w", err)
	}
	var id Identity
	if err := json.Unmarshal(b, &id); err != nil {
		return nil, fmt.Errorf("agent state %s: %w", stateFile, err)
	}
	if id.CAPEM, err = os.ReadFile(filepath.Join(dir, caFile)); err != nil {
		return nil, fmt.Errorf("agent CA: %w", err)
	}
	seed, err := os.ReadFile(filepath.Join(dir, signingFile))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("agent signing key %s: missing or malformed", signingFile)
	}
	id.SigningKey = ed25519.NewKeyFromSeed(seed)
	if id.SealKey, err = os.ReadFile(filepath.Join(dir, sealFile)); err != nil {
		return nil, fmt.Errorf("agent seal key: %w", err)
	}
	if _, err := seal.PublicKeyOf(id.SealKey); err != nil {
		return nil, fmt.Errorf("agent seal key %s: %w", sealFile, err)
	}
	return &id, nil
}

// keys are made before enrollment and saved only once it succeeds.
type keys struct {
	signing ed25519.PrivateKey
	seal    *seal.KeyPair
}

func newKeys() (*keys, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	sk, err := seal.GenerateKey()
	if err != nil {
		return nil, err
	}
	return &keys{signing: priv, seal: sk}, nil
}

// save writes the identity; private keys are 0600 in a 0700 directory.
func (id *Identity) save(dir string, k *keys) error {
	if err := os.MkdirAll(filepath.Join(dir, jobsDir), 0o700); err != nil {
		return fmt.Errorf("agent state dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(id, "", "  ")
	files := []struct {
		name string
		data []byte
	}{
		{signingFile, k.signing.Seed()},
		{sealFile, k.seal.Private},
		{caFile, id.CAPEM},
		{stateFile, append(b, '\n')},
	}
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data); err != nil {
			return err
		}
	}
	return nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
