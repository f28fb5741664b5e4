package agent

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/desktopflow"
)

func testPackage(t *testing.T) ([]byte, string) {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "desktopflow.yaml"), []byte("name: p\nrun: ./run.sh\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "run.sh"), []byte("#!/bin/sh\necho run\n"), 0o755))
	archive, digest, _, err := desktopflow.Pack(dir)
	require.NoError(t, err)
	return archive, digest
}

// counting returns a fetch func that hands out archive and counts calls.
func counting(archive []byte, calls *int) func(context.Context, string) ([]byte, error) {
	return func(context.Context, string) ([]byte, error) {
		*calls++
		return bytes.Clone(archive), nil
	}
}

func TestPackageDirCachesByDigest(t *testing.T) {
	t.Parallel()
	a := &Agent{StateDir: t.TempDir()}
	archive, digest := testPackage(t)
	calls := 0

	dir, err := a.PackageDir(t.Context(), digest, counting(archive, &calls))
	require.NoError(t, err)
	require.Equal(t, 1, calls)
	hex, _ := desktopflow.ParseDigest(digest)
	require.Equal(t, filepath.Join(a.StateDir, "packages", hex), dir)
	b, err := os.ReadFile(filepath.Join(dir, "run.sh"))
	require.NoError(t, err)
	require.Equal(t, "#!/bin/sh\necho run\n", string(b))
	for _, p := range []string{filepath.Join(a.StateDir, "packages"), dir} {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), p)
	}

	again, err := a.PackageDir(t.Context(), digest, counting(archive, &calls))
	require.NoError(t, err)
	require.Equal(t, dir, again)
	require.Equal(t, 1, calls, "a cached package is not fetched again")
	entries, err := os.ReadDir(filepath.Join(a.StateDir, "packages"))
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary directory is left")
}

func TestPackageDirRefusesACorruptArchive(t *testing.T) {
	t.Parallel()
	a := &Agent{StateDir: t.TempDir()}
	archive, digest := testPackage(t)
	bad := bytes.Clone(archive)
	bad[len(bad)/2] ^= 0xff
	calls := 0

	_, err := a.PackageDir(t.Context(), digest, counting(bad, &calls))
	require.True(t, deskrun.IsCode(err, deskrun.CodeDesktopFlowPackageInvalid), "%v", err)
	entries, err := os.ReadDir(filepath.Join(a.StateDir, "packages"))
	require.NoError(t, err)
	require.Empty(t, entries, "a refused package is not cached, nor its temporary directory left")

	// The next call fetches again, and a good archive is accepted.
	_, err = a.PackageDir(t.Context(), digest, counting(archive, &calls))
	require.NoError(t, err)
	require.Equal(t, 2, calls)

	// A fetch error is returned as is; a bad digest is refused before any
	// fetch.
	boom := errors.New("server gone")
	_, err = a.PackageDir(t.Context(), desktopflow.Digest([]byte("other")), func(context.Context, string) ([]byte, error) { return nil, boom })
	require.ErrorIs(t, err, boom)
	_, err = a.PackageDir(t.Context(), "sha256:../../etc", counting(archive, &calls))
	require.True(t, deskrun.IsCode(err, deskrun.CodeDesktopFlowPackageInvalid), "%v", err)
	require.Equal(t, 2, calls)
}
