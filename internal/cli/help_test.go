package cli

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden help files")

// TestHelpGolden keeps the help of every visible command in
// testdata/help: a change to the CLI's surface shows up in review.
// Regenerate with: go test ./internal/cli -run TestHelpGolden -update
func TestHelpGolden(t *testing.T) {
	root := NewRoot(IO{Getenv: func(string) string { return "" }})
	var walk func(c *cobra.Command)
	var cmds []*cobra.Command
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "completion" && c.Parent() != root {
			return
		}
		cmds = append(cmds, c)
		for _, sub := range c.Commands() {
			if sub.Name() != "help" {
				walk(sub)
			}
		}
	}
	walk(root)
	seen := map[string]bool{}
	for _, c := range cmds {
		path := strings.Fields(c.CommandPath())[1:]
		name := strings.Join(append([]string{"deskrun"}, path...), "_") + ".txt"
		seen[name] = true
		var out bytes.Buffer
		code := Main(context.Background(), append(path, "--help"), IO{Out: &out, Err: &out, Getenv: func(string) string { return "" }})
		require.Equal(t, ExitOK, code)
		golden := filepath.Join("testdata", "help", name)
		if *update {
			require.NoError(t, os.WriteFile(golden, out.Bytes(), 0o644))
			continue
		}
		want, err := os.ReadFile(golden)
		require.NoError(t, err, "missing golden file: run go test ./internal/cli -run TestHelpGolden -update")
		require.Equal(t, string(want), out.String(), "help of %q changed: run with -update if intended", c.CommandPath())
	}
	if !*update {
		files, _ := filepath.Glob(filepath.Join("testdata", "help", "*.txt"))
		for _, f := range files {
			require.True(t, seen[filepath.Base(f)], "stale golden file %s", f)
		}
	}
}

func TestExitCodes(t *testing.T) {
	t.Parallel()
	run := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := Main(context.Background(), args, IO{Out: &out, Err: &out, Getenv: func(string) string { return "" }})
		return code, out.String()
	}
	code, out := run("no-such-command")
	require.Equal(t, ExitUsage, code, out)
	code, out = run("machine", "list", "--no-such-flag")
	require.Equal(t, ExitUsage, code, out)
	code, out = run("machine", "show")
	require.Equal(t, ExitUsage, code, out)
	// A failure (no server configured) is exit 1 with a named code.
	code, out = run("--config", filepath.Join(t.TempDir(), "none.yaml"), "machine", "list")
	require.Equal(t, ExitFailed, code, out)
	require.Contains(t, out, "InvalidRequest")
	code, out = run("--config", filepath.Join(t.TempDir(), "none.yaml"), "machine", "list", "--json")
	require.Equal(t, ExitFailed, code, out)
	require.Contains(t, out, `"code": "InvalidRequest"`)
	code, _ = run("version")
	require.Equal(t, ExitOK, code)
}
