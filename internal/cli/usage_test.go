package cli

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestBadInputNamesTheMistake: a newcomer's mistakes, each caught before a
// server is asked, name what is wrong; a mistake in the call itself is exit 2.
func TestBadInputNamesTheMistake(t *testing.T) {
	t.Parallel()
	noServer := filepath.Join(t.TempDir(), "none.yaml")
	for _, tc := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"flow", "apply", "/nonexistent/greet.yaml"}, ExitFailed,
			[]string{"error: FlowInvalid: open /nonexistent/greet.yaml: no such file or directory", "resolution: Give the path of a flow definition"}},
		{[]string{"desktopflow", "run", "x"}, ExitUsage, []string{"error: --connection is required"}},
		{[]string{"flow", "show", "greet", "--version", "-1"}, ExitUsage, []string{"error: --version must be a number from 1"}},
		{[]string{"desktopflow", "run", "hello", "--connection", "robot", "--version", "-1"}, ExitUsage, []string{"error: --version must be a number from 1"}},
		{[]string{"bench", "--scenario", "nope"}, ExitUsage, []string{`--scenario must be all, limits,`, `not "nope"`}},
		{[]string{"run", "show", "nope"}, ExitFailed, []string{"error: InvalidRequest: no server configured", "resolution: Run `deskrun dev`"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			code, out := runCLI(append([]string{"--config", noServer}, tc.args...)...)
			require.Equal(t, tc.code, code, out)
			for _, w := range tc.want {
				require.Contains(t, out, w)
			}
		})
	}
}
