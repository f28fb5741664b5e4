package desktopflow

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/deskrun/deskrun"
)

// Limits of a package. The compressed limit bounds what the server reads
// and stores; the unpacked limit and the entry count stop an archive that
// is small but expands into gigabytes or millions of files (a tar bomb).
const (
	MaxPackageBytes  = 16 << 20
	MaxUnpackedBytes = 64 << 20
	MaxEntries       = 10000
)

// headerAllowance is what the tar stream may hold on top of file contents
// (512-byte headers, PAX records, padding) before it counts as a bomb.
const headerAllowance = MaxEntries*2048 + 1<<20

// epoch is the modification time of every entry: time.Time{} cannot be
// written in a USTAR header and would make the writer switch formats.
var epoch = time.Unix(0, 0)

// Digest is the content address of an archive: "sha256:" and the hex
// SHA-256 of its bytes.
func Digest(archive []byte) string {
	sum := sha256.Sum256(archive)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ParseDigest returns the hex part of a digest made by Digest, and false
// for anything else (so the hex is safe as a file name).
func ParseDigest(digest string) (string, bool) {
	h, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(h) != sha256.Size*2 || strings.ToLower(h) != h {
		return "", false
	}
	if _, err := hex.DecodeString(h); err != nil {
		return "", false
	}
	return h, true
}

func tooLarge(format string, args ...any) *deskrun.Error {
	return &deskrun.Error{Code: deskrun.CodeDesktopFlowPackageTooLarge, Message: fmt.Sprintf(format, args...),
		Resolution: fmt.Sprintf("Keep a package under %d MiB compressed, %d MiB unpacked and %d files; leave data the flow can fetch at run time out of it.",
			MaxPackageBytes>>20, MaxUnpackedBytes>>20, MaxEntries)}
}

func invalid(format string, args ...any) *deskrun.Error {
	return &deskrun.Error{Code: deskrun.CodeDesktopFlowPackageInvalid, Message: fmt.Sprintf(format, args...)}
}

// Pack makes the package of the flow in dir: a tar.gz of dir's regular
// files and directories with desktopflow.yaml at its root. The archive is
// deterministic, so the same content always has the same digest: paths
// sorted, times zeroed, owners empty, only permission bits kept. A .git
// directory is left out. A symbolic link, device, socket or pipe is refused
// (DesktopFlowPackageInvalid) rather than followed or stored: a link could
// point outside the package on the machine that unpacks it.
//
// The manifest is parsed and checked first, so its errors (naming
// DIR/desktopflow.yaml:LINE:COLUMN) come before any other.
func Pack(dir string) (archive []byte, digest string, m *Manifest, err error) {
	mpath := filepath.Join(dir, ManifestFile)
	fi, err := os.Stat(mpath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", nil, &deskrun.Error{Code: deskrun.CodeDesktopFlowInvalid,
			Message:    fmt.Sprintf("%s has no %s", dir, ManifestFile),
			Resolution: "A desktop flow is a directory with a desktopflow.yaml (name, run, inputs, outputs) and its files; see examples/hello."}
	}
	if err != nil {
		return nil, "", nil, err
	}
	if fi.Size() > MaxManifestBytes {
		return nil, "", nil, &deskrun.Error{Code: deskrun.CodeDesktopFlowInvalid,
			Message: fmt.Sprintf("%s: the manifest is %d bytes, over the limit of %d", mpath, fi.Size(), MaxManifestBytes)}
	}
	data, err := os.ReadFile(mpath)
	if err != nil {
		return nil, "", nil, err
	}
	if m, err = ParseManifest(mpath, data); err != nil {
		return nil, "", nil, err
	}

	type file struct {
		name string
		info fs.FileInfo
	}
	var files []file
	var total int64
	err = filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		if de.IsDir() && de.Name() == ".git" {
			return filepath.SkipDir
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if err := checkName(name); err != nil {
			return err
		}
		info, err := de.Info()
		if err != nil {
			return err
		}
		switch mode := info.Mode(); {
		case mode.IsDir():
		case mode.IsRegular():
			if total += info.Size(); total > MaxUnpackedBytes {
				return tooLarge("%s holds more than %d MiB of files", dir, MaxUnpackedBytes>>20)
			}
		case mode&fs.ModeSymlink != 0:
			return invalid("%s is a symbolic link: a package holds regular files and directories only; copy the file it points to into the package", p)
		default:
			return invalid("%s is not a regular file or a directory (%s)", p, mode.Type())
		}
		if len(files) == MaxEntries {
			return tooLarge("%s holds more than %d files and directories", dir, MaxEntries)
		}
		files = append(files, file{name, info})
		return nil
	})
	if err != nil {
		return nil, "", nil, err
	}
	slices.SortFunc(files, func(a, b file) int { return strings.Compare(a.name, b.name) })
	regular := make(map[string]bool, len(files))
	for _, f := range files {
		regular[f.name] = f.info.Mode().IsRegular()
	}
	if err := m.checkRun(regular); err != nil {
		return nil, "", nil, err
	}

	var buf bytes.Buffer
	gz, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, "", nil, err
	}
	tw := tar.NewWriter(gz)
	for _, f := range files {
		hdr := &tar.Header{Name: f.name, Mode: int64(f.info.Mode().Perm()), ModTime: epoch, Typeflag: tar.TypeReg}
		if f.info.IsDir() {
			hdr.Name += "/"
			hdr.Typeflag = tar.TypeDir
		} else {
			hdr.Size = f.info.Size()
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, "", nil, fmt.Errorf("pack %s: %w", f.name, err)
		}
		if !f.info.IsDir() {
			if err := copyFile(tw, filepath.Join(dir, filepath.FromSlash(f.name))); err != nil {
				return nil, "", nil, fmt.Errorf("pack %s: %w", f.name, err)
			}
		}
		if buf.Len() > MaxPackageBytes {
			break // Close below cannot make it smaller
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", nil, fmt.Errorf("pack: %w", err)
	}
	if err := gz.Close(); err != nil {
		return nil, "", nil, fmt.Errorf("pack: %w", err)
	}
	if buf.Len() > MaxPackageBytes {
		return nil, "", nil, tooLarge("the package of %s is over %d MiB compressed", dir, MaxPackageBytes>>20)
	}
	return buf.Bytes(), Digest(buf.Bytes()), m, nil
}

// copyFile writes a file's bytes; the tar writer refuses more or fewer
// than the header's size, so a file that changes while it is packed fails.
func copyFile(w io.Writer, p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// checkRun checks that a script named by run ("./hello.sh …") is a regular
// file of the package.
func (m *Manifest) checkRun(regular map[string]bool) error {
	first, _, _ := strings.Cut(strings.TrimSpace(m.Run), " ")
	if !strings.HasPrefix(first, "./") {
		return nil
	}
	name := path.Clean(first)
	if checkName(name) != nil || !regular[name] {
		d := &decoder{path: m.file}
		return d.errorAt(m.runPos, "run", "%s is not a file of the package", first)
	}
	return nil
}

// checkName refuses entry names that are not a plain relative path inside
// the package: absolute, with a "..", "." or empty component, or with a
// backslash, colon or NUL (which Windows would read as a separator, a drive
// or a stream).
func checkName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") {
		return invalid("entry %q is an absolute path", name)
	}
	if strings.ContainsAny(name, "\\:\x00") {
		return invalid("entry %q holds a backslash, colon or NUL", name)
	}
	for part := range strings.SplitSeq(name, "/") {
		switch part {
		case "..":
			return invalid("entry %q escapes the package (a \"..\" component)", name)
		case "", ".":
			return invalid("entry %q is not a clean relative path", name)
		}
	}
	return nil
}

// Inspect checks an archive as Unpack does, without writing anything, and
// returns its manifest. The server calls it on every push: the digest,
// the manifest and every entry are checked there, never taken from the
// client.
func Inspect(archive []byte) (*Manifest, error) {
	if len(archive) > MaxPackageBytes {
		return nil, tooLarge("the package is %d bytes, over the limit of %d MiB", len(archive), MaxPackageBytes>>20)
	}
	return walk(archive, func(string, *tar.Header, io.Reader) error { return nil })
}

// Unpack verifies that archive has the given digest and extracts it into
// dst, which it creates (0700) and which must not exist. It refuses, with
// DesktopFlowPackageInvalid, entries with an absolute path or a ".."
// component, links, devices and anything but files and directories, and
// with DesktopFlowPackageTooLarge an archive that expands past the limits.
// Files keep their permission bits (never setuid, setgid or sticky). On
// error dst is removed.
//
// WARNING: this is what stands between a package and the agent's file
// system; after changing it run go test ./internal/desktopflow -run Unpack.
func Unpack(archive []byte, digest, dst string) (err error) {
	if got := Digest(archive); got != digest {
		return invalid("the archive's digest is %s, not %s: it was altered or cut short", got, digest)
	}
	if len(archive) > MaxPackageBytes {
		return tooLarge("the package is %d bytes, over the limit of %d MiB", len(archive), MaxPackageBytes>>20)
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dst)
		}
	}()
	// os.Root keeps every operation under dst even if the checks of walk
	// missed something: a path that resolves outside it fails.
	root, err := os.OpenRoot(dst)
	if err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	defer root.Close()
	dirModes := map[string]fs.FileMode{}
	_, err = walk(archive, func(name string, hdr *tar.Header, r io.Reader) error {
		mode := fs.FileMode(hdr.Mode).Perm()
		if hdr.Typeflag == tar.TypeDir {
			dirModes[name] = mode
			return root.MkdirAll(name, 0o700)
		}
		if dir := path.Dir(name); dir != "." {
			if err := root.MkdirAll(dir, 0o700); err != nil {
				return err
			}
		}
		f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, r); err != nil {
			f.Close()
			return err
		}
		if err := f.Chmod(mode); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
	if err != nil {
		var de *deskrun.Error
		if errors.As(err, &de) {
			return err
		}
		return fmt.Errorf("unpack: %w", err)
	}
	// Directory modes last: a read-only directory would refuse its files.
	for name, mode := range dirModes {
		d, err := root.Open(name)
		if err != nil {
			return fmt.Errorf("unpack: %w", err)
		}
		err = d.Chmod(mode)
		d.Close()
		if err != nil {
			return fmt.Errorf("unpack: %w", err)
		}
	}
	return nil
}

// errStreamTooLarge ends a decompressed stream past the unpacked limit.
var errStreamTooLarge = errors.New("decompressed stream over the limit")

type limitedReader struct {
	r    io.Reader
	left int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errStreamTooLarge
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// walk reads every entry of archive, checks it, and calls fn with its
// clean name, header and content (fn must read the content before it
// returns). It returns the parsed manifest once every entry passed.
func walk(archive []byte, fn func(name string, hdr *tar.Header, r io.Reader) error) (*Manifest, error) {
	gz, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		return nil, invalid("the package is not a gzip archive: %v", err)
	}
	tr := tar.NewReader(&limitedReader{r: gz, left: MaxUnpackedBytes + headerAllowance})
	isDir := map[string]bool{} // every name seen: true for a directory
	var total int64
	var manifest []byte
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if errors.Is(err, errStreamTooLarge) {
			return nil, tooLarge("the package expands past %d MiB", MaxUnpackedBytes>>20)
		}
		if err != nil {
			return nil, invalid("the package is not a valid tar.gz: %v", err)
		}
		if n == MaxEntries {
			return nil, tooLarge("the package holds more than %d entries", MaxEntries)
		}
		name := strings.TrimPrefix(hdr.Name, "./")
		switch hdr.Typeflag {
		case tar.TypeDir:
			name = strings.TrimSuffix(name, "/")
			if name == "" || name == "." {
				continue // the package's root, as `tar -C dir .` writes it
			}
		case tar.TypeReg:
		case tar.TypeSymlink, tar.TypeLink:
			return nil, invalid("entry %q is a link (to %q): a package holds regular files and directories only", hdr.Name, hdr.Linkname)
		default:
			return nil, invalid("entry %q is not a regular file or a directory (tar type %q)", hdr.Name, hdr.Typeflag)
		}
		if err := checkName(name); err != nil {
			return nil, err
		}
		if _, dup := isDir[name]; dup {
			return nil, invalid("entry %q appears twice", name)
		}
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if d, seen := isDir[dir]; seen && !d {
				return nil, invalid("entry %q is under %q, which is a file", name, dir)
			}
		}
		isDir[name] = hdr.Typeflag == tar.TypeDir
		var content io.Reader = tr
		if hdr.Typeflag == tar.TypeReg {
			if hdr.Size < 0 {
				return nil, invalid("entry %q declares a negative size", name)
			}
			if total += hdr.Size; total > MaxUnpackedBytes {
				return nil, tooLarge("the package expands past %d MiB (entry %q declares %d bytes)", MaxUnpackedBytes>>20, name, hdr.Size)
			}
			if name == ManifestFile {
				if hdr.Size > MaxManifestBytes {
					return nil, &deskrun.Error{Code: deskrun.CodeDesktopFlowInvalid,
						Message: fmt.Sprintf("%s: the manifest is %d bytes, over the limit of %d", ManifestFile, hdr.Size, MaxManifestBytes)}
				}
				if manifest, err = io.ReadAll(tr); err != nil {
					return nil, streamError(err)
				}
				content = bytes.NewReader(manifest)
			}
		}
		if err := fn(name, hdr, content); err != nil {
			return nil, streamError(err)
		}
	}
	if manifest == nil {
		return nil, invalid("the package has no %s at its root", ManifestFile)
	}
	m, err := ParseManifest(ManifestFile, manifest)
	if err != nil {
		return nil, err
	}
	regular := make(map[string]bool, len(isDir))
	for name, dir := range isDir {
		regular[name] = !dir
	}
	if err := m.checkRun(regular); err != nil {
		return nil, err
	}
	return m, nil
}

// streamError names a read error of an entry's content.
func streamError(err error) error {
	switch {
	case errors.Is(err, errStreamTooLarge):
		return tooLarge("the package expands past %d MiB", MaxUnpackedBytes>>20)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, gzip.ErrChecksum), errors.Is(err, gzip.ErrHeader):
		return invalid("the package is cut short or corrupt: %v", err)
	}
	return err
}
