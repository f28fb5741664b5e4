package e2e

import (
	"bytes"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/wire"
)

func examplesDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "examples")
}

// TestReadmeWalkthrough follows README.md's path with the examples: push
// them, make a connection for a real user, run hello and window as that
// user, and look at the window's screenshot.
func TestReadmeWalkthrough(t *testing.T) {
	t.Parallel()
	w := connWorld(t)
	entries, err := os.ReadDir(examplesDir())
	require.NoError(t, err)
	for _, e := range entries {
		if e.IsDir() {
			out := w.Run("desktopflow", "push", filepath.Join(examplesDir(), e.Name()))
			require.Contains(t, out, e.Name())
		}
	}
	out, err := w.create("robot", fixturePrefix+"ok", fixturePW)
	require.NoError(t, err, out)

	out = w.Run("desktopflow", "run", "hello", "--connection", "robot", "--input", "who=Ada", "--follow")
	require.Contains(t, out, "hello, Ada")
	require.Contains(t, out, "uid:    ")
	require.Contains(t, out, `outputs: {"greeting":"hello, Ada"}`)

	r, out, err := w.runFlow("window", "--connection", "robot", "--screenshot", "--wait", "60s")
	require.NoError(t, err, out)
	require.Equal(t, "succeeded", r.State)
	require.True(t, r.HasScreenshot)
	file := filepath.Join(t.TempDir(), "window.png")
	w.Run("run", "show", r.ID, "--screenshot", file)
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	img, err := png.Decode(bytes.NewReader(b))
	require.NoError(t, err)
	// The root window was painted #2b4a6f by the flow.
	cr, cg, cb, _ := img.At(5, 5).RGBA()
	require.Equal(t, []uint32{0x2b, 0x4a, 0x6f}, []uint32{cr >> 8, cg >> 8, cb >> 8})

	var list wire.RunList
	require.NoError(t, json.Unmarshal([]byte(w.Run("run", "list", "--json")), &list))
	require.Len(t, list.Runs, 2)
	require.True(t, strings.Contains(w.Run("run", "list"), "succeeded"))

	// The first cloud flow: from the CLI, then from its webhook.
	_, err = w.TryStdin("hook-secret-0123456789", "secret", "set", "hello_hook", "--value-stdin")
	require.NoError(t, err)
	w.Run("flow", "apply", filepath.Join(examplesDir(), "hello.flow.yaml"))
	out = w.Run("flow", "run", "hello-flow", "--input", "who=Grace", "--wait", "60s", "--json")
	var fr wire.FlowRun
	require.NoError(t, json.Unmarshal([]byte(out), &fr))
	require.Equal(t, "succeeded", fr.State, out)
	require.JSONEq(t, `{"greeting": "hello, Grace"}`, string(fr.Outputs))
	hr := w.hook("hello", "hook-secret-0123456789", []byte(`{"who": "Linus"}`))
	w.Eventually("webhook flow run done", func() bool { return w.flowRun(hr.ID).State == "succeeded" })
	require.JSONEq(t, `{"greeting": "hello, Linus"}`, string(w.flowRun(hr.ID).Outputs))
}
