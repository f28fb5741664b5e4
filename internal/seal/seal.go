// Package seal seals credentials to a machine's HPKE key (RFC 9180,
// crypto/hpke, KEM MLKEM768X25519 with HKDF-SHA256 and AES-256-GCM), so
// that only that machine's agent can open them: the server stores and
// forwards ciphertext it cannot read.
//
// The info string binds a ciphertext to its purpose (for a connection: its
// id and the machine id), so a blob moved to another connection or machine
// does not open.
package seal

import (
	"crypto/hpke"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// Suite names the algorithms in sealed blobs and key ids.
const Suite = "hpke-mlkem768x25519-hkdfsha256-aes256gcm"

var (
	kem  = hpke.MLKEM768X25519()
	kdf  = hpke.HKDFSHA256()
	aead = hpke.AES256GCM()
)

// ErrOpen is returned when a blob does not open with the key and info
// given: tampered, sealed to another key, or bound to another purpose.
var ErrOpen = errors.New("sealed credential does not open with this machine's key and binding")

// KeyPair is a machine's sealing key.
type KeyPair struct {
	Private []byte // 32-byte seed; keep it 0600 on the machine
	Public  []byte
}

// GenerateKey makes a new sealing key pair.
func GenerateKey() (*KeyPair, error) {
	priv, err := kem.GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("generate HPKE key: %w", err)
	}
	pb, err := priv.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encode HPKE key: %w", err)
	}
	return &KeyPair{Private: pb, Public: priv.PublicKey().Bytes()}, nil
}

// PublicKeyOf derives the public key from a stored private key.
func PublicKeyOf(private []byte) ([]byte, error) {
	priv, err := kem.NewPrivateKey(private)
	if err != nil {
		return nil, fmt.Errorf("parse HPKE private key: %w", err)
	}
	return priv.PublicKey().Bytes(), nil
}

// KeyID names a public key: the first 16 hex digits of its SHA-256.
func KeyID(public []byte) string {
	sum := sha256.Sum256(public)
	return "k_" + hex.EncodeToString(sum[:8])
}

// ValidPublicKey reports whether b parses as a sealing public key.
func ValidPublicKey(b []byte) bool {
	_, err := kem.NewPublicKey(b)
	return err == nil
}

// Seal encrypts plaintext to public, bound to info.
func Seal(public, info, plaintext []byte) ([]byte, error) {
	pub, err := kem.NewPublicKey(public)
	if err != nil {
		return nil, fmt.Errorf("parse HPKE public key: %w", err)
	}
	ct, err := hpke.Seal(pub, kdf, aead, info, plaintext)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return ct, nil
}

// Open decrypts a blob sealed to private's public key with the same info.
// The caller owns the returned plaintext and should zero it after use.
func Open(private, info, blob []byte) ([]byte, error) {
	priv, err := kem.NewPrivateKey(private)
	if err != nil {
		return nil, fmt.Errorf("parse HPKE private key: %w", err)
	}
	pt, err := hpke.Open(priv, kdf, aead, info, blob)
	if err != nil {
		return nil, ErrOpen
	}
	return pt, nil
}

// Zero overwrites b.
func Zero(b []byte) {
	clear(b)
}
