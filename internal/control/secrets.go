package control

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"regexp"

	"github.com/deskrun/deskrun"
)

// SecretBox seals the values of the server's secret store with
// AES-256-GCM under a key that lives in a 0600 file next to the database
// (DATA/secrets.key), never in it: a copy of the database alone does not
// reveal a secret. The secret's name is the associated data, so a value
// moved to another name does not open.
type SecretBox struct{ aead cipher.AEAD }

// LoadSecretBox reads the key at path, making it on first use.
func LoadSecretBox(path string) (*SecretBox, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, 32)
		_, _ = rand.Read(key)
		if err := os.WriteFile(path, key, 0o600); err != nil {
			return nil, fmt.Errorf("write secret key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("read secret key: %w", err)
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("secret key %s: want 32 bytes, have %d", path, len(key))
	}
	return NewSecretBox(key)
}

// NewSecretBox uses a 32-byte key.
func NewSecretBox(key []byte) (*SecretBox, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &SecretBox{aead}, nil
}

func (b *SecretBox) seal(name string, value []byte) []byte {
	nonce := make([]byte, b.aead.NonceSize())
	_, _ = rand.Read(nonce)
	return b.aead.Seal(nonce, nonce, value, []byte(name))
}

func (b *SecretBox) open(name string, sealed []byte) ([]byte, error) {
	n := b.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("sealed secret too short")
	}
	return b.aead.Open(nil, sealed[:n], sealed[n:], []byte(name))
}

// secretName: a secret is read as secrets.NAME in a CEL expression.
var secretName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

func (s *Service) secretBox() (*SecretBox, error) {
	if s.Secrets == nil {
		return nil, &deskrun.Error{Code: deskrun.CodeUnavailable, Message: "this server has no secret store"}
	}
	return s.Secrets, nil
}

// SetSecret stores (replaces) a secret.
func (s *Service) SetSecret(ctx context.Context, actor Actor, name string, value []byte) error {
	if !secretName.MatchString(name) {
		return &deskrun.Error{Code: deskrun.CodeInvalid, Field: "name", Message: fmt.Sprintf("secret name %q: use letters, digits and _ (it is read as secrets.%s)", name, name)}
	}
	if len(value) == 0 || len(value) > 64<<10 {
		return &deskrun.Error{Code: deskrun.CodeInvalid, Field: "value", Message: "a secret's value must be 1 byte to 64 KiB"}
	}
	box, err := s.secretBox()
	if err != nil {
		return err
	}
	if err := s.Store.PutSecret(ctx, name, box.seal(name, value), s.now()); err != nil {
		return err
	}
	s.Log.Info("secret set", "secret", name, "actor", actor.ID)
	return nil
}

// Secrets lists secret names.
func (s *Service) ListSecrets(ctx context.Context) ([]deskrun.Secret, error) {
	return s.Store.ListSecrets(ctx)
}

// DeleteSecret removes a secret.
func (s *Service) DeleteSecret(ctx context.Context, name string) error {
	return s.Store.DeleteSecret(ctx, name)
}

// secretValue opens a secret.
func (s *Service) secretValue(ctx context.Context, name string) ([]byte, error) {
	box, err := s.secretBox()
	if err != nil {
		return nil, err
	}
	sealed, err := s.Store.GetSecret(ctx, name)
	if err != nil {
		return nil, err
	}
	v, err := box.open(name, sealed)
	if err != nil {
		return nil, fmt.Errorf("open secret %s: %w", name, err)
	}
	return v, nil
}

// allSecrets opens every secret, for an http step's URL and headers.
func (s *Service) allSecrets(ctx context.Context) (map[string]string, error) {
	list, err := s.Store.ListSecrets(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, sec := range list {
		v, err := s.secretValue(ctx, sec.Name)
		if err != nil {
			return nil, err
		}
		out[sec.Name] = string(v)
	}
	return out, nil
}
