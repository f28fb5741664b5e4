package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/desktopflow"
)

// packagesDir holds unpacked packages, one directory per digest:
// STATE/packages/<hex>/.
const packagesDir = "packages"

// PackageDir returns the directory of the unpacked package with the given
// digest, fetching it with fetch only when it is not cached yet. The
// archive fetch returns is verified against digest and unpacked into a
// temporary directory that is renamed into place, so the cache holds
// only whole, verified packages and a package that fails is not kept.
// Directories are 0700: only the agent reads the cache.
//
// Two calls for the same digest at once may both fetch; the first rename
// wins and the other's copy is dropped.
func (a *Agent) PackageDir(ctx context.Context, digest string, fetch func(ctx context.Context, digest string) ([]byte, error)) (string, error) {
	hex, ok := desktopflow.ParseDigest(digest)
	if !ok {
		return "", &deskrun.Error{Code: deskrun.CodeDesktopFlowPackageInvalid, Message: fmt.Sprintf("%q is not a package digest", digest)}
	}
	root := filepath.Join(a.StateDir, packagesDir)
	dir := filepath.Join(root, hex)
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return dir, nil
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", fmt.Errorf("package cache: %w", err)
	}
	archive, err := fetch(ctx, digest)
	if err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(root, ".tmp-"+hex[:12]+"-")
	if err != nil {
		return "", fmt.Errorf("package cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	unpacked := filepath.Join(tmp, "pkg")
	if err := desktopflow.Unpack(archive, digest, unpacked); err != nil {
		return "", err
	}
	if err := os.Rename(unpacked, dir); err != nil {
		// Another call put the same package in place first: use it.
		if fi, serr := os.Stat(dir); serr == nil && fi.IsDir() {
			return dir, nil
		}
		if errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("package cache: %s exists and is not a directory", dir)
		}
		return "", fmt.Errorf("package cache: %w", err)
	}
	return dir, nil
}
