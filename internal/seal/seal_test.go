package seal

import (
	"bytes"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSealOpen(t *testing.T) {
	t.Parallel()
	k, err := GenerateKey()
	require.NoError(t, err)
	other, err := GenerateKey()
	require.NoError(t, err)
	pub, err := PublicKeyOf(k.Private)
	require.NoError(t, err)
	require.Equal(t, k.Public, pub)
	require.True(t, ValidPublicKey(k.Public))
	require.False(t, ValidPublicKey([]byte("short")))
	require.NotEqual(t, KeyID(k.Public), KeyID(other.Public))

	info := []byte("deskrun credential v1\x00c_1\x00m_1")
	secret := []byte("Secret123!")
	blob, err := Seal(k.Public, info, secret)
	require.NoError(t, err)
	require.False(t, bytes.Contains(blob, secret), "the plaintext shows in the blob")

	got, err := Open(k.Private, info, blob)
	require.NoError(t, err)
	require.Equal(t, secret, got)
	Zero(got)
	require.Equal(t, make([]byte, len(secret)), got)

	tampered := bytes.Clone(blob)
	tampered[len(tampered)-1] ^= 1
	for name, try := range map[string]func() ([]byte, error){
		"tampered":         func() ([]byte, error) { return Open(k.Private, info, tampered) },
		"other connection": func() ([]byte, error) { return Open(k.Private, []byte("deskrun credential v1\x00c_2\x00m_1"), blob) },
		"other machine":    func() ([]byte, error) { return Open(other.Private, info, blob) },
		"truncated":        func() ([]byte, error) { return Open(k.Private, info, blob[:10]) },
	} {
		_, err := try()
		require.True(t, errors.Is(err, ErrOpen), "%s: %v", name, err)
	}
}
