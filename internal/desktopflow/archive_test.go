package desktopflow_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/desktopflow"
)

const helloManifest = "name: hello\nrun: ./bin/hello.sh\n"

// writeFlow makes a package directory from name → content; a name ending
// in "/" is a directory.
func writeFlow(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if strings.HasSuffix(name, "/") {
			require.NoError(t, os.MkdirAll(p, 0o755))
			continue
		}
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		require.NoError(t, os.WriteFile(p, []byte(content), mode))
		require.NoError(t, os.Chmod(p, mode)) // whatever the umask
	}
	return dir
}

func helloFlow(t *testing.T) string {
	return writeFlow(t, map[string]string{
		"desktopflow.yaml": helloManifest,
		"bin/hello.sh":     "#!/bin/sh\necho hello\n",
		"data/a.txt":       "a",
		"empty/":           "",
	})
}

func TestPackIsDeterministic(t *testing.T) {
	t.Parallel()
	dir := helloFlow(t)
	a1, d1, m, err := desktopflow.Pack(dir)
	require.NoError(t, err)
	require.Equal(t, "hello", m.Name)
	require.Equal(t, desktopflow.Digest(a1), d1)
	_, ok := desktopflow.ParseDigest(d1)
	require.True(t, ok, d1)

	// The same content elsewhere, written later and in another order, packs
	// to the same bytes.
	other := writeFlow(t, map[string]string{
		"empty/":           "",
		"data/a.txt":       "a",
		"bin/hello.sh":     "#!/bin/sh\necho hello\n",
		"desktopflow.yaml": helloManifest,
	})
	a2, d2, _, err := desktopflow.Pack(other)
	require.NoError(t, err)
	require.Equal(t, d1, d2)
	require.Equal(t, a1, a2)

	// A change of content or of mode is a new digest; .git is left out.
	require.NoError(t, os.WriteFile(filepath.Join(other, "data", "a.txt"), []byte("b"), 0o644))
	_, d3, _, err := desktopflow.Pack(other)
	require.NoError(t, err)
	require.NotEqual(t, d1, d3)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, ".git", "objects"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".git", "HEAD"), []byte("ref"), 0o644))
	_, d4, _, err := desktopflow.Pack(dir)
	require.NoError(t, err)
	require.Equal(t, d1, d4, ".git is not packed")
	require.NoError(t, os.Chmod(filepath.Join(dir, "data", "a.txt"), 0o600))
	_, d5, _, err := desktopflow.Pack(dir)
	require.NoError(t, err)
	require.NotEqual(t, d1, d5, "modes are part of the content")

	// The entries: sorted, zero times, no owners.
	var names []string
	readTar(t, a1, func(h *tar.Header) {
		names = append(names, h.Name)
		require.Zero(t, h.ModTime.Unix(), h.Name)
		require.Zero(t, h.Uid+h.Gid, h.Name)
		require.Empty(t, h.Uname+h.Gname, h.Name)
	})
	require.Equal(t, []string{"bin/", "bin/hello.sh", "data/", "data/a.txt", "desktopflow.yaml", "empty/"}, names)
}

func readTar(t *testing.T, archive []byte, fn func(*tar.Header)) {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(archive))
	require.NoError(t, err)
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		fn(h)
	}
}

func TestPackUnpackRoundTrip(t *testing.T) {
	t.Parallel()
	archive, digest, _, err := desktopflow.Pack(helloFlow(t))
	require.NoError(t, err)
	m, err := desktopflow.Inspect(archive)
	require.NoError(t, err)
	require.Equal(t, "./bin/hello.sh", m.Run)

	dst := filepath.Join(t.TempDir(), "pkg")
	require.NoError(t, desktopflow.Unpack(archive, digest, dst))
	b, err := os.ReadFile(filepath.Join(dst, "bin", "hello.sh"))
	require.NoError(t, err)
	require.Equal(t, "#!/bin/sh\necho hello\n", string(b))
	for name, mode := range map[string]os.FileMode{".": 0o700, "bin/hello.sh": 0o755, "data/a.txt": 0o644, "empty": 0o755 | os.ModeDir} {
		fi, err := os.Stat(filepath.Join(dst, name))
		require.NoError(t, err)
		if name == "." {
			require.Equal(t, mode, fi.Mode().Perm(), "the package root is private")
			continue
		}
		require.Equal(t, mode, fi.Mode(), name)
	}

	// dst must not exist: Unpack never writes into a directory it did not make.
	require.Error(t, desktopflow.Unpack(archive, digest, dst))
}

func TestPackRefuses(t *testing.T) {
	t.Parallel()
	t.Run("no manifest", func(t *testing.T) {
		t.Parallel()
		_, _, _, err := desktopflow.Pack(writeFlow(t, map[string]string{"a.sh": "x"}))
		requireCode(t, err, deskrun.CodeDesktopFlowInvalid)
	})
	t.Run("schema error names the file", func(t *testing.T) {
		t.Parallel()
		dir := writeFlow(t, map[string]string{"desktopflow.yaml": "name: x\nrun: y\nextra: 1\n"})
		_, _, _, err := desktopflow.Pack(dir)
		de := requireCode(t, err, deskrun.CodeDesktopFlowInvalid)
		require.Contains(t, de.Message, filepath.Join(dir, "desktopflow.yaml")+":3:1: field extra:")
	})
	t.Run("missing script", func(t *testing.T) {
		t.Parallel()
		dir := writeFlow(t, map[string]string{"desktopflow.yaml": "name: x\nrun: ./nope.sh arg\n"})
		_, _, _, err := desktopflow.Pack(dir)
		de := requireCode(t, err, deskrun.CodeDesktopFlowInvalid)
		require.Contains(t, de.Message, "desktopflow.yaml:2:6: field run: ./nope.sh is not a file of the package")
	})
	t.Run("script is a directory", func(t *testing.T) {
		t.Parallel()
		dir := writeFlow(t, map[string]string{"desktopflow.yaml": "name: x\nrun: ./bin\n", "bin/": ""})
		_, _, _, err := desktopflow.Pack(dir)
		requireCode(t, err, deskrun.CodeDesktopFlowInvalid)
	})
	t.Run("symlink", func(t *testing.T) {
		t.Parallel()
		dir := writeFlow(t, map[string]string{"desktopflow.yaml": "name: x\nrun: y\n"})
		require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(dir, "passwd")))
		_, _, _, err := desktopflow.Pack(dir)
		de := requireCode(t, err, deskrun.CodeDesktopFlowPackageInvalid)
		require.Contains(t, de.Message, "symbolic link")
	})
	t.Run("over the compressed limit", func(t *testing.T) {
		t.Parallel()
		dir := writeFlow(t, map[string]string{"desktopflow.yaml": "name: x\nrun: y\n"})
		noise := make([]byte, desktopflow.MaxPackageBytes+1024) // random: does not compress
		_, _ = rand.Read(noise)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "noise.bin"), noise, 0o644))
		_, _, _, err := desktopflow.Pack(dir)
		requireCode(t, err, deskrun.CodeDesktopFlowPackageTooLarge)
	})
	t.Run("over the unpacked limit", func(t *testing.T) {
		t.Parallel()
		dir := writeFlow(t, map[string]string{"desktopflow.yaml": "name: x\nrun: y\n"})
		f, err := os.Create(filepath.Join(dir, "sparse.bin"))
		require.NoError(t, err)
		require.NoError(t, f.Truncate(desktopflow.MaxUnpackedBytes+1)) // sparse: costs no disk
		require.NoError(t, f.Close())
		_, _, _, err = desktopflow.Pack(dir)
		requireCode(t, err, deskrun.CodeDesktopFlowPackageTooLarge)
	})
}

// entry is one hand-built tar entry.
type entry struct {
	name     string
	typ      byte
	body     string
	size     int64 // declared size when not len(body)
	linkname string
	mode     int64
}

func manifestEntry() entry {
	return entry{name: "desktopflow.yaml", typ: tar.TypeReg, body: "name: evil\nrun: echo\n"}
}

// build writes entries as they are, with none of Pack's care; a size
// larger than the body is declared but not written (the tar is then cut
// short, as a hostile one would be).
func build(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.linkname, Mode: e.mode, Size: int64(len(e.body)), Format: tar.FormatPAX}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if e.size != 0 {
			h.Size = e.size
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		require.NoError(t, tw.WriteHeader(h))
		if e.body != "" {
			_, err := tw.Write([]byte(e.body))
			require.NoError(t, err)
		}
	}
	if entries[len(entries)-1].size == 0 {
		require.NoError(t, tw.Close())
	}
	require.NoError(t, gz.Close())
	return buf.Bytes()
}

func TestUnpackRefusesHostileArchives(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		entries []entry
		code    string
		msg     string
	}{
		{"path traversal", []entry{manifestEntry(), {name: "../../etc/x", typ: tar.TypeReg, body: "pwned"}},
			deskrun.CodeDesktopFlowPackageInvalid, `escapes the package`},
		{"traversal inside", []entry{manifestEntry(), {name: "a/../../x", typ: tar.TypeReg, body: "pwned"}},
			deskrun.CodeDesktopFlowPackageInvalid, `escapes the package`},
		{"absolute path", []entry{manifestEntry(), {name: "/etc/x", typ: tar.TypeReg, body: "pwned"}},
			deskrun.CodeDesktopFlowPackageInvalid, "absolute path"},
		{"symlink then a file through it", []entry{manifestEntry(), {name: "etc", typ: tar.TypeSymlink, linkname: "/etc"}, {name: "etc/x", typ: tar.TypeReg, body: "pwned"}},
			deskrun.CodeDesktopFlowPackageInvalid, `is a link (to "/etc")`},
		{"hard link", []entry{manifestEntry(), {name: "pw", typ: tar.TypeLink, linkname: "/etc/passwd"}},
			deskrun.CodeDesktopFlowPackageInvalid, "is a link"},
		{"device", []entry{manifestEntry(), {name: "null", typ: tar.TypeChar}},
			deskrun.CodeDesktopFlowPackageInvalid, "not a regular file"},
		{"fifo", []entry{manifestEntry(), {name: "p", typ: tar.TypeFifo}},
			deskrun.CodeDesktopFlowPackageInvalid, "not a regular file"},
		{"backslash", []entry{manifestEntry(), {name: `..\..\x`, typ: tar.TypeReg, body: "x"}},
			deskrun.CodeDesktopFlowPackageInvalid, "backslash"},
		{"duplicate entry", []entry{manifestEntry(), {name: "a", typ: tar.TypeReg, body: "1"}, {name: "a", typ: tar.TypeReg, body: "2"}},
			deskrun.CodeDesktopFlowPackageInvalid, "appears twice"},
		{"file under a file", []entry{manifestEntry(), {name: "a", typ: tar.TypeReg, body: "1"}, {name: "a/b", typ: tar.TypeReg, body: "2"}},
			deskrun.CodeDesktopFlowPackageInvalid, "which is a file"},
		{"huge declared size", []entry{manifestEntry(), {name: "big", typ: tar.TypeReg, body: "x", size: 1 << 40}},
			deskrun.CodeDesktopFlowPackageTooLarge, "declares 1099511627776 bytes"},
		{"no manifest", []entry{{name: "a", typ: tar.TypeReg, body: "1"}},
			deskrun.CodeDesktopFlowPackageInvalid, "no desktopflow.yaml"},
		{"manifest in a subdirectory only", []entry{{name: "sub/desktopflow.yaml", typ: tar.TypeReg, body: "name: a\nrun: b\n"}},
			deskrun.CodeDesktopFlowPackageInvalid, "no desktopflow.yaml"},
		{"invalid manifest", []entry{{name: "desktopflow.yaml", typ: tar.TypeReg, body: "name: a\nrun: b\nx: 1\n"}},
			deskrun.CodeDesktopFlowInvalid, "desktopflow.yaml:3:1: field x:"},
		{"script missing", []entry{{name: "desktopflow.yaml", typ: tar.TypeReg, body: "name: a\nrun: ./go.sh\n"}},
			deskrun.CodeDesktopFlowInvalid, "./go.sh is not a file of the package"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			archive := build(t, tc.entries...)
			_, err := desktopflow.Inspect(archive)
			de := requireCode(t, err, tc.code)
			require.Contains(t, de.Message, tc.msg)

			parent := t.TempDir()
			dst := filepath.Join(parent, "pkg")
			err = desktopflow.Unpack(archive, desktopflow.Digest(archive), dst)
			de = requireCode(t, err, tc.code)
			require.Contains(t, de.Message, tc.msg)
			_, statErr := os.Stat(dst)
			require.True(t, os.IsNotExist(statErr), "a refused package leaves nothing behind")
			entries, err := os.ReadDir(parent)
			require.NoError(t, err)
			require.Empty(t, entries, "nothing was written next to dst either")
		})
	}
}

func TestUnpackAcceptsForeignTar(t *testing.T) {
	t.Parallel()
	// `tar -czf p.tgz -C dir .` names entries ./x and has a ./ root.
	archive := build(t,
		entry{name: "./", typ: tar.TypeDir, mode: 0o755},
		entry{name: "./desktopflow.yaml", typ: tar.TypeReg, body: "name: a\nrun: ./s/go.sh\n"},
		entry{name: "./s/go.sh", typ: tar.TypeReg, body: "#!/bin/sh\n", mode: 0o4755},
	)
	m, err := desktopflow.Inspect(archive)
	require.NoError(t, err)
	require.Equal(t, "a", m.Name)
	dst := filepath.Join(t.TempDir(), "pkg")
	require.NoError(t, desktopflow.Unpack(archive, desktopflow.Digest(archive), dst))
	fi, err := os.Stat(filepath.Join(dst, "s", "go.sh"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o755), fi.Mode(), "setuid is dropped")
}

func TestUnpackVerifiesDigest(t *testing.T) {
	t.Parallel()
	archive, digest, _, err := desktopflow.Pack(helloFlow(t))
	require.NoError(t, err)
	bad := bytes.Clone(archive)
	bad[len(bad)/2] ^= 0xff
	dst := filepath.Join(t.TempDir(), "pkg")
	de := requireCode(t, desktopflow.Unpack(bad, digest, dst), deskrun.CodeDesktopFlowPackageInvalid)
	require.Contains(t, de.Message, "not "+digest)
	_, err = os.Stat(dst)
	require.True(t, os.IsNotExist(err), "nothing is written before the digest is checked")

	requireCode(t, desktopflow.Unpack(archive, "sha256:00", dst), deskrun.CodeDesktopFlowPackageInvalid)
	_, err = desktopflow.Inspect([]byte("not gzip"))
	requireCode(t, err, deskrun.CodeDesktopFlowPackageInvalid)
	_, err = desktopflow.Inspect(archive[:len(archive)/2])
	requireCode(t, err, deskrun.CodeDesktopFlowPackageInvalid)
}

func TestParseDigest(t *testing.T) {
	t.Parallel()
	d := desktopflow.Digest([]byte("x"))
	h, ok := desktopflow.ParseDigest(d)
	require.True(t, ok)
	require.Len(t, h, 64)
	for _, bad := range []string{"", "sha256:", "md5:" + h, "sha256:" + strings.ToUpper(h), "sha256:../" + h[3:], "sha256:" + h + "0"} {
		_, ok := desktopflow.ParseDigest(bad)
		require.False(t, ok, bad)
	}
}
