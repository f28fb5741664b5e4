package server_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/desktopflow"
	"github.com/deskrun/deskrun/internal/wire"
)

// examplesDir holds the example flows the README uses.
var examplesDir = filepath.Join("..", "..", "examples")

// TestExamplesArePushable pushes every directory under examples/ through
// the real API: an example that the server refuses is a broken README.
func TestExamplesArePushable(t *testing.T) {
	t.Parallel()
	e := startServer(t)
	entries, err := os.ReadDir(examplesDir)
	require.NoError(t, err)
	n := 0
	for _, de := range entries {
		if !de.IsDir() {
			continue
		}
		n++
		archive, digest, m, err := desktopflow.Pack(filepath.Join(examplesDir, de.Name()))
		require.NoError(t, err, de.Name())
		f, created, err := e.admin.PushDesktopFlow(t.Context(), archive)
		require.NoError(t, err, de.Name())
		require.True(t, created, de.Name())
		require.Equal(t, m.Name, f.Name)
		require.Equal(t, 1, f.Version)
		require.Equal(t, digest, f.Digest, "the server computes the same digest")
		require.Equal(t, int64(len(archive)), f.Size)
	}
	require.NotZero(t, n, "examples/ holds at least one flow")
}

// pushRaw posts body as a package with the given token.
func (e *env) pushRaw(t *testing.T, token string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "POST", e.url+"/api/v1/desktopflows", body)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/gzip")
	resp, err := e.hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

func requireEnvelope(t *testing.T, resp *http.Response, b []byte, status int, code string) *deskrun.Error {
	t.Helper()
	require.Equal(t, status, resp.StatusCode, "%s", b)
	var env wire.ErrorEnvelope
	require.NoError(t, json.Unmarshal(b, &env), "%s", b)
	require.NotNil(t, env.Error, "%s", b)
	require.Equal(t, code, env.Error.Code, "%s", b)
	return env.Error
}

// tarGz builds a package by hand, with none of Pack's checks: name →
// content.
func tarGz(t *testing.T, files ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for i := 0; i < len(files); i += 2 {
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: files[i], Mode: 0o755, Size: int64(len(files[i+1])), Typeflag: tar.TypeReg}))
		_, err := tw.Write([]byte(files[i+1]))
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	require.NoError(t, gz.Close())
	return buf.Bytes()
}

func (e *env) requireNoFlows(t *testing.T) {
	t.Helper()
	fs, err := e.admin.DesktopFlows(t.Context())
	require.NoError(t, err)
	require.Empty(t, fs, "a refused package stores nothing")
}

func TestDesktopFlowPushRefusesBadPackages(t *testing.T) {
	t.Parallel()
	e := startServer(t)
	script := "#!/bin/sh\necho hi\n"

	t.Run("unknown field names line and column", func(t *testing.T) {
		archive := tarGz(t, "desktopflow.yaml", "name: bad\nrun: ./go.sh\ncolour: red\n", "go.sh", script)
		resp, b := e.pushRaw(t, e.token, bytes.NewReader(archive))
		de := requireEnvelope(t, resp, b, 400, deskrun.CodeDesktopFlowInvalid)
		require.Contains(t, de.Message, "desktopflow.yaml:3:1: field colour:")
		require.Equal(t, "colour", de.Field)
		e.requireNoFlows(t)
	})
	t.Run("path traversal", func(t *testing.T) {
		archive := tarGz(t, "desktopflow.yaml", "name: evil\nrun: ./go.sh\n", "go.sh", script, "../evil", "pwned")
		resp, b := e.pushRaw(t, e.token, bytes.NewReader(archive))
		de := requireEnvelope(t, resp, b, 400, deskrun.CodeDesktopFlowPackageInvalid)
		require.Contains(t, de.Message, `"../evil" escapes the package`)
		e.requireNoFlows(t)
	})
	t.Run("not a package", func(t *testing.T) {
		resp, b := e.pushRaw(t, e.token, strings.NewReader(`{"name":"json"}`))
		requireEnvelope(t, resp, b, 400, deskrun.CodeDesktopFlowPackageInvalid)
		resp, b = e.pushRaw(t, e.token, http.NoBody)
		requireEnvelope(t, resp, b, 400, deskrun.CodeDesktopFlowPackageInvalid)
		e.requireNoFlows(t)
	})
	t.Run("over the limit", func(t *testing.T) {
		big := make([]byte, desktopflow.MaxPackageBytes+1)
		_, _ = rand.Read(big)
		// With a Content-Length the server refuses before reading.
		resp, b := e.pushRaw(t, e.token, bytes.NewReader(big))
		de := requireEnvelope(t, resp, b, 413, deskrun.CodeDesktopFlowPackageTooLarge)
		require.Contains(t, de.Message, "16 MiB")
		// Without one (chunked), it stops reading at the limit.
		resp, b = e.pushRaw(t, e.token, io.MultiReader(bytes.NewReader(big)))
		requireEnvelope(t, resp, b, 413, deskrun.CodeDesktopFlowPackageTooLarge)
		e.requireNoFlows(t)

		// The package limit is this route's only: the others keep the
		// global one.
		long := `{"kind":"api","name":"` + strings.Repeat("x", 200<<10) + `"}`
		_, resp, b = e.call(t, "POST", "/api/v1/tokens", e.token, strings.NewReader(long))
		requireEnvelope(t, resp, b, 413, deskrun.CodeBodyTooLarge)
	})
	t.Run("viewer may not push", func(t *testing.T) {
		viewer, err := e.admin.CreateToken(t.Context(), wire.TokenCreate{Kind: "api", Role: "viewer"})
		require.NoError(t, err)
		archive := tarGz(t, "desktopflow.yaml", "name: ok\nrun: echo\n")
		resp, b := e.pushRaw(t, viewer.Secret, bytes.NewReader(archive))
		requireEnvelope(t, resp, b, 403, deskrun.CodeForbidden)
		e.requireNoFlows(t)
	})
}

func TestDesktopFlowVersions(t *testing.T) {
	t.Parallel()
	e := startServer(t)
	ctx := t.Context()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "desktopflow.yaml"),
		[]byte("name: greet\ninputs:\n  - name: who\n    required: true\nrun: ./greet.sh\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "greet.sh"), []byte("#!/bin/sh\necho hi $DESKRUN_INPUT_WHO\n"), 0o755))
	archive, digest, _, err := desktopflow.Pack(dir)
	require.NoError(t, err)

	v1, created, err := e.admin.PushDesktopFlow(ctx, archive)
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, 1, v1.Version)
	require.True(t, strings.HasPrefix(v1.CreatedBy, "token:"), v1.CreatedBy)
	var m desktopflow.Manifest
	require.NoError(t, json.Unmarshal(v1.Manifest, &m))
	require.Equal(t, "./greet.sh", m.Run)
	require.Equal(t, "who", m.Inputs[0].Name)

	// The same content again: the same version, answered 200.
	resp, b := e.pushRaw(t, e.token, bytes.NewReader(archive))
	require.Equal(t, 200, resp.StatusCode, "%s", b)
	again, created, err := e.admin.PushDesktopFlow(ctx, archive)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, v1, again)

	// New content: version 2, and the list shows it.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "greet.sh"), []byte("#!/bin/sh\necho hello $DESKRUN_INPUT_WHO\n"), 0o755))
	archive2, digest2, _, err := desktopflow.Pack(dir)
	require.NoError(t, err)
	v2, created, err := e.admin.PushDesktopFlow(ctx, archive2)
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, 2, v2.Version)
	fs, err := e.admin.DesktopFlows(ctx)
	require.NoError(t, err)
	require.Len(t, fs, 1)
	require.Equal(t, digest2, fs[0].Digest)

	detail, err := e.admin.DesktopFlow(ctx, "greet")
	require.NoError(t, err)
	require.Equal(t, 2, detail.Latest.Version)
	require.Equal(t, []int{2, 1}, []int{detail.Versions[0].Version, detail.Versions[1].Version})
	old, err := e.admin.DesktopFlowVersion(ctx, "greet", 1)
	require.NoError(t, err)
	require.Equal(t, digest, old.Digest)
	_, err = e.admin.DesktopFlowVersion(ctx, "greet", 3)
	require.True(t, deskrun.IsCode(err, deskrun.CodeNotFound), "%v", err)
	_, resp, b = e.call(t, "GET", "/api/v1/desktopflows/greet/versions/first", e.token, nil)
	requireEnvelope(t, resp, b, 400, deskrun.CodeInvalid)

	// The stored package is the pushed bytes.
	got, err := e.srv.Store.GetPackage(ctx, digest2)
	require.NoError(t, err)
	require.Equal(t, archive2, got)

	require.NoError(t, e.admin.DeleteDesktopFlow(ctx, "greet"))
	_, err = e.admin.DesktopFlow(ctx, "greet")
	require.True(t, deskrun.IsCode(err, deskrun.CodeNotFound), "%v", err)
	err = e.admin.DeleteDesktopFlow(ctx, "greet")
	require.True(t, deskrun.IsCode(err, deskrun.CodeNotFound), "%v", err)
	_, err = e.srv.Store.GetPackage(ctx, digest)
	require.True(t, deskrun.IsCode(err, deskrun.CodeNotFound), "the packages went with the flow: %v", err)
}

// examplePackage is the package of examples/hello, as a request body.
func examplePackage(t *testing.T) string {
	t.Helper()
	archive, _, _, err := desktopflow.Pack(filepath.Join(examplesDir, "hello"))
	require.NoError(t, err)
	return string(archive)
}
