// Package world runs the real deskrun binary for the end-to-end test
// packages (test/e2e, test/browser): it builds the binary once per test
// binary, sets up the PAM fixture of real local users, and drives a
// server process, an agent process and the CLI as a user would.
package world

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/client"
	"github.com/deskrun/deskrun/internal/pki"
)

// Bin is the deskrun binary Main built.
var Bin string

// Main is a test package's TestMain: it builds the deskrun binary into a
// temporary directory named after the package, runs the tests, then tears
// down the package's PAM fixture (if a test set it up).
func Main(m *testing.M, name string, pam *PAM) {
	dir, err := os.MkdirTemp("", "deskrun-"+name+"-")
	if err != nil {
		panic(err)
	}
	Bin = filepath.Join(dir, "deskrun")
	if out, err := exec.Command("go", "build", "-o", Bin, "github.com/deskrun/deskrun/cmd/deskrun").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build deskrun: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	if pam != nil {
		pam.Teardown()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// FreePort returns a loopback address no one listens on.
func FreePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// FlowDir writes a desktop flow package into a temp dir.
func FlowDir(t *testing.T, manifest string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "desktopflow.yaml"), []byte(manifest), 0o644))
	for name, body := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755))
	}
	return dir
}

// World is one server data dir, one agent state dir and a client config,
// all under one temp dir, with the processes started in it.
type World struct {
	T        *testing.T
	Dir      string
	Addr     string // the server's listen address
	URL      string // https://Addr
	Env      []string
	Server   *exec.Cmd
	Agent    *exec.Cmd
	AgentDir string
	// ServerArgs are extra flags for `deskrun server`.
	ServerArgs []string
	// Patience is how long Eventually waits.
	Patience time.Duration
}

// New makes a world with nothing running yet.
func New(t *testing.T) *World {
	dir := t.TempDir()
	addr := FreePort(t)
	w := &World{T: t, Dir: dir, Addr: addr, URL: "https://" + addr, AgentDir: filepath.Join(dir, "agent"), Patience: 20 * time.Second}
	w.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	return w
}

// Start starts `deskrun ARGS...` in the background, logging to
// Dir/ARGS[0].log, and kills it when the test ends.
func (w *World) Start(args ...string) *exec.Cmd {
	cmd := exec.Command(Bin, args...)
	cmd.Env = w.Env
	logf, err := os.OpenFile(filepath.Join(w.Dir, args[0]+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(w.T, err)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(w.T, cmd.Start())
	w.T.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() })
	return cmd
}

// StartServer starts the server, waits until it listens, and points the
// CLI at it with its admin token.
func (w *World) StartServer() {
	w.Server = w.Start(append([]string{"server", "--data", filepath.Join(w.Dir, "data"), "--listen", w.Addr,
		"--heartbeat-interval", "200ms", "--agent-lease", "10s"}, w.ServerArgs...)...)
	w.Eventually("server ready", func() bool {
		_, err := os.Stat(filepath.Join(w.Dir, "data", "admin.token"))
		if err != nil {
			return false
		}
		c, err := net.Dial("tcp", w.Addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	tok, err := os.ReadFile(filepath.Join(w.Dir, "data", "admin.token"))
	require.NoError(w.T, err)
	w.Env = append(w.Env, "DESKRUN_SERVER="+w.URL, "DESKRUN_TOKEN="+strings.TrimSpace(string(tok)),
		"DESKRUN_CA_FILE="+filepath.Join(w.Dir, "data", "tls", "ca.crt"))
}

// Enroll enrolls a machine called name and starts its agent.
func (w *World) Enroll(name string) {
	token := strings.TrimSpace(w.Run("token", "create", "--enrollment"))
	w.Run("agent", "enroll", "--token", token, "--name", name, "--state-dir", w.AgentDir)
	w.Agent = w.Start("agent", "run", "--state-dir", w.AgentDir)
}

// Kill kills a process with SIGKILL.
func (w *World) Kill(cmd *exec.Cmd) {
	require.NoError(w.T, cmd.Process.Signal(syscall.SIGKILL))
	cmd.Wait()
}

// Run runs a CLI command and returns stdout; it fails the test on error.
func (w *World) Run(args ...string) string {
	w.T.Helper()
	out, err := w.Try(args...)
	require.NoError(w.T, err, "deskrun %s: %s", strings.Join(args, " "), out)
	return out
}

// Try runs a CLI command and returns stdout, or stdout and stderr on error.
func (w *World) Try(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, Bin, args...)
	cmd.Env = w.Env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
}

// TryStdin runs a CLI command with stdin and returns stdout and stderr.
func (w *World) TryStdin(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, Bin, args...)
	cmd.Env = w.Env
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// Eventually waits up to Patience for cond; on timeout it prints the
// processes' logs and fails the test.
func (w *World) Eventually(what string, cond func() bool) {
	w.T.Helper()
	deadline := time.Now().Add(w.Patience)
	for !cond() {
		if time.Now().After(deadline) {
			logs, _ := filepath.Glob(filepath.Join(w.Dir, "*.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				w.T.Logf("%s:\n%s", l, b)
			}
			w.T.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// getenv is the last value of key in the world's environment.
func (w *World) getenv(key string) string {
	var v string
	for _, e := range w.Env {
		if s, ok := strings.CutPrefix(e, key+"="); ok {
			v = s
		}
	}
	return v
}

// APIClient is an API client for the world's server, as the CLI's admin.
func (w *World) APIClient() *client.Client {
	pemBytes, err := os.ReadFile(w.getenv("DESKRUN_CA_FILE"))
	require.NoError(w.T, err)
	cl, err := client.New(w.getenv("DESKRUN_SERVER"), w.getenv("DESKRUN_TOKEN"), pemBytes)
	require.NoError(w.T, err)
	return cl
}

// HTTPClient trusts the world's server CA.
func (w *World) HTTPClient() *http.Client {
	pemBytes, err := os.ReadFile(w.getenv("DESKRUN_CA_FILE"))
	require.NoError(w.T, err)
	cfg, err := pki.PoolConfig(pemBytes, "127.0.0.1")
	require.NoError(w.T, err)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 30 * time.Second}
}
