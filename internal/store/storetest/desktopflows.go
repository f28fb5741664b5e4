package storetest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/store"
)

// pkg is a fake package: the store treats archives as opaque bytes and
// trusts the caller's digest, so any bytes do.
type pkg struct {
	data   []byte
	digest string
}

func newPkg(content string) pkg {
	data := []byte("\x1f\x8b" + content + "\x00\xff") // binary, not text
	sum := sha256.Sum256(data)
	return pkg{data: data, digest: "sha256:" + hex.EncodeToString(sum[:])}
}

func newFlow(name string, p pkg, n int) *deskrun.DesktopFlow {
	return &deskrun.DesktopFlow{
		Name:      name,
		Digest:    p.digest,
		Manifest:  json.RawMessage(fmt.Sprintf(`{"name":%q,"run":"./run.sh","timeout":"30m0s","n":%d}`, name, n)),
		CreatedAt: at(time.Duration(n) * time.Second),
		CreatedBy: "token:t_maker",
	}
}

func pushFlow(t *testing.T, s store.Tx, f *deskrun.DesktopFlow, p pkg) bool {
	t.Helper()
	created, err := s.CreateDesktopFlowVersion(t.Context(), f, p.data)
	require.NoError(t, err)
	return created
}

func flowVersions(fs []*deskrun.DesktopFlow) []string {
	return ids(fs, func(f *deskrun.DesktopFlow) string { return fmt.Sprintf("%s@%d", f.Name, f.Version) })
}

var desktopFlowTests = map[string]func(t *testing.T, s store.Store){
	"CreateGet": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		a := newPkg("a")
		f := newFlow("hello", a, 1)
		require.True(t, pushFlow(t, s, f, a))
		require.Equal(t, 1, f.Version)
		require.Equal(t, int64(len(a.data)), f.Size)

		got, err := s.GetDesktopFlow(ctx, "hello", 1)
		require.NoError(t, err)
		require.Equal(t, f, got)
		latest, err := s.GetDesktopFlow(ctx, "hello", 0)
		require.NoError(t, err)
		require.Equal(t, f, latest, "version 0 is the latest")
		data, err := s.GetPackage(ctx, a.digest)
		require.NoError(t, err)
		require.Equal(t, a.data, data, "the package is stored byte for byte")
	},
	"Versions": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		a, b := newPkg("a"), newPkg("b")
		require.True(t, pushFlow(t, s, newFlow("hello", a, 1), a))
		require.True(t, pushFlow(t, s, newFlow("hello", b, 2), b))

		// The content of the latest version again: no new version, and f
		// becomes the version that has it.
		again := newFlow("hello", b, 3)
		again.CreatedBy = "token:t_other"
		require.False(t, pushFlow(t, s, again, b))
		require.Equal(t, 2, again.Version)
		require.Equal(t, at(2*time.Second), again.CreatedAt)
		require.Equal(t, "token:t_maker", again.CreatedBy)

		// An older version's content is a rollback: a new latest version,
		// sharing the stored package.
		back := newFlow("hello", a, 4)
		require.True(t, pushFlow(t, s, back, a))
		require.Equal(t, 3, back.Version)

		vs, err := s.ListDesktopFlowVersions(ctx, "hello")
		require.NoError(t, err)
		require.Equal(t, []string{"hello@3", "hello@2", "hello@1"}, flowVersions(vs), "newest first")
		require.Equal(t, a.digest, vs[0].Digest)
		require.Equal(t, vs[0], back)
		latest, err := s.GetDesktopFlow(ctx, "hello", 0)
		require.NoError(t, err)
		require.Equal(t, 3, latest.Version)
		v2, err := s.GetDesktopFlow(ctx, "hello", 2)
		require.NoError(t, err)
		require.Equal(t, b.digest, v2.Digest)
	},
	"List": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		fs, err := s.ListDesktopFlows(ctx)
		require.NoError(t, err)
		require.Empty(t, fs)
		a, b, c := newPkg("a"), newPkg("b"), newPkg("c")
		pushFlow(t, s, newFlow("zeta", a, 1), a)
		pushFlow(t, s, newFlow("alpha", a, 2), a)
		pushFlow(t, s, newFlow("zeta", b, 3), b)
		pushFlow(t, s, newFlow("zeta", c, 4), c)
		fs, err = s.ListDesktopFlows(ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"alpha@1", "zeta@3"}, flowVersions(fs), "the latest of each flow, by name")
		require.Equal(t, c.digest, fs[1].Digest)
	},
	"Delete": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		shared, own := newPkg("shared"), newPkg("own")
		pushFlow(t, s, newFlow("hello", shared, 1), shared)
		pushFlow(t, s, newFlow("hello", own, 2), own)
		pushFlow(t, s, newFlow("other", shared, 3), shared)

		require.NoError(t, s.DeleteDesktopFlow(ctx, "hello"))
		_, err := s.GetDesktopFlow(ctx, "hello", 0)
		requireCode(t, err, deskrun.CodeNotFound)
		_, err = s.ListDesktopFlowVersions(ctx, "hello")
		requireCode(t, err, deskrun.CodeNotFound)
		_, err = s.GetPackage(ctx, own.digest)
		requireCode(t, err, deskrun.CodeNotFound)
		data, err := s.GetPackage(ctx, shared.digest)
		require.NoError(t, err, "a package another flow uses stays")
		require.Equal(t, shared.data, data)
		fs, err := s.ListDesktopFlows(ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"other@1"}, flowVersions(fs))

		requireCode(t, s.DeleteDesktopFlow(ctx, "hello"), deskrun.CodeNotFound)
		require.NoError(t, s.DeleteDesktopFlow(ctx, "other"))
		_, err = s.GetPackage(ctx, shared.digest)
		requireCode(t, err, deskrun.CodeNotFound)

		// A name deleted and pushed again starts over at version 1.
		f := newFlow("hello", own, 4)
		require.True(t, pushFlow(t, s, f, own))
		require.Equal(t, 1, f.Version)
	},
	"NotFound": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		_, err := s.GetDesktopFlow(ctx, "missing", 0)
		requireCode(t, err, deskrun.CodeNotFound)
		require.ErrorContains(t, err, `desktop flow named "missing" not found`)
		_, err = s.GetDesktopFlow(ctx, "missing", 2)
		requireCode(t, err, deskrun.CodeNotFound)
		require.ErrorContains(t, err, `desktop flow named "missing" not found`)
		a := newPkg("a")
		pushFlow(t, s, newFlow("hello", a, 1), a)
		_, err = s.GetDesktopFlow(ctx, "hello", 2)
		requireCode(t, err, deskrun.CodeNotFound)
		require.ErrorContains(t, err, `desktop flow "hello" has no version 2`)
		_, err = s.ListDesktopFlowVersions(ctx, "missing")
		requireCode(t, err, deskrun.CodeNotFound)
		_, err = s.GetPackage(ctx, newPkg("b").digest)
		requireCode(t, err, deskrun.CodeNotFound)
		requireCode(t, s.DeleteDesktopFlow(ctx, "missing"), deskrun.CodeNotFound)
	},
	"Invalid": func(t *testing.T, s store.Store) {
		a := newPkg("a")
		for _, f := range []*deskrun.DesktopFlow{{Digest: a.digest}, {Name: "x"}} {
			_, err := s.CreateDesktopFlowVersion(t.Context(), f, a.data)
			requireCode(t, err, deskrun.CodeInvalid)
		}
		_, err := s.CreateDesktopFlowVersion(t.Context(), newFlow("x", a, 1), nil)
		requireCode(t, err, deskrun.CodeInvalid)
	},
	"RolledBackInTx": func(t *testing.T, s store.Store) {
		ctx := t.Context()
		a := newPkg("a")
		boom := errors.New("boom")
		err := s.InTx(ctx, func(tx store.Tx) error {
			pushFlow(t, tx, newFlow("hello", a, 1), a)
			got, err := tx.GetDesktopFlow(ctx, "hello", 0)
			require.NoError(t, err, "the transaction sees its own version")
			require.Equal(t, 1, got.Version)
			return boom
		})
		require.ErrorIs(t, err, boom)
		_, err = s.GetDesktopFlow(ctx, "hello", 0)
		requireCode(t, err, deskrun.CodeNotFound)
		_, err = s.GetPackage(ctx, a.digest)
		requireCode(t, err, deskrun.CodeNotFound)
	},
}
