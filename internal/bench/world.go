package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/client"
	"github.com/deskrun/deskrun/internal/pki"
	"github.com/deskrun/deskrun/internal/server"
	"github.com/deskrun/deskrun/internal/wire"
)

// world is where the end-to-end scenarios run: `deskrun server` and
// `deskrun agent run` as processes of their own, as deployed, talking over
// real TLS on 127.0.0.1, and an admin API client in the bench process.
// Everything a scenario measures is read through the API (the stamps of
// jobs and runs, the agent's timings) and from /proc (each process's CPU).
type world struct {
	Client     *client.Client
	URL        string
	CAPEM      []byte
	Machine    string // the agent's machine ID ("" with NoAgent)
	SQLiteSync string

	Server, Agent *child
	tmp           string // removed by stop, when the data is temporary
	command, env  []string
	token         string   // the admin API token
	data          string   // the server's data directory
	serverArgs    []string // to restart it as it was
	serverEnv     []string
}

type worldOptions struct {
	// Command runs deskrun (the binary, then any arguments before the
	// subcommand); Env is added to its environment. Tests run their own
	// binary as deskrun this way.
	Command []string
	Env     []string
	// Data is the server's data directory (it may hold a seeded store);
	// empty means a temporary one.
	Data string
	// AgentState is the agent's state directory; empty means one beside
	// the temporary data. Run directories go below it, so the desktop
	// scenarios give one their users can search.
	AgentState string
	AgentName  string
	Slots      int
	// SQLiteSync is FULL (the default) or NORMAL.
	SQLiteSync string
	// ServerArgs are extra `deskrun server` flags; AgentEnv extra
	// environment of the agent (its private PAM stack).
	ServerArgs []string
	AgentEnv   []string
	// NoAgent starts the server only (simulated agents connect instead).
	NoAgent bool
	// ProfileDir, if set, makes both processes write a CPU profile there
	// (server.pprof, agent.pprof; DESKRUN_CPUPROFILE) until they stop.
	ProfileDir string
}

// start starts the server, waits until it is ready, enrolls the agent and
// runs it until the server sees it online. On error, stop undoes it.
func (w *world) start(ctx context.Context, o worldOptions) error {
	if len(o.Command) == 0 {
		return errors.New("bench: no deskrun command to start")
	}
	w.command, w.env = o.Command, o.Env
	data := o.Data
	if data == "" || (o.AgentState == "" && !o.NoAgent) {
		var err error
		if w.tmp, err = os.MkdirTemp("", "deskrun-bench-"); err != nil {
			return err
		}
		if data == "" {
			data = filepath.Join(w.tmp, "server")
		}
		if o.AgentState == "" {
			o.AgentState = filepath.Join(w.tmp, "agent")
		}
	}
	w.SQLiteSync = o.SQLiteSync
	if w.SQLiteSync == "" {
		w.SQLiteSync = "FULL"
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	w.URL = "https://" + addr
	profile := func(name string) []string {
		if o.ProfileDir == "" {
			return nil
		}
		return []string{"DESKRUN_CPUPROFILE=" + filepath.Join(o.ProfileDir, name+".pprof")}
	}
	w.data = data
	w.serverArgs = append([]string{"server", "--data", data, "--listen", addr, "--sqlite-sync", w.SQLiteSync, "--log-level", "warn"}, o.ServerArgs...)
	w.serverEnv = profile("server")
	if w.Server, err = w.startChild("server", w.serverArgs, w.serverEnv); err != nil {
		return err
	}
	if err := w.waitReady(ctx, data, 60*time.Second); err != nil {
		return err
	}
	if o.NoAgent {
		return nil
	}
	tok, err := w.Client.CreateToken(ctx, wire.TokenCreate{Kind: string(deskrun.TokenEnrollment), Name: "bench agent"})
	if err != nil {
		return fmt.Errorf("create enrollment token: %w", err)
	}
	name := o.AgentName
	if name == "" {
		name = "bench-agent"
	}
	env := append(append([]string{}, o.AgentEnv...), "DESKRUN_CONFIG=/nonexistent")
	enroll := exec.CommandContext(ctx, w.command[0], append(w.command[1:len(w.command):len(w.command)], "agent", "enroll", "--token", tok.Secret, "--name", name,
		"--state-dir", o.AgentState, "--force", "--json")...)
	enroll.Env = append(append(os.Environ(), w.env...), env...)
	out, err := enroll.Output()
	if err != nil {
		return fmt.Errorf("deskrun agent enroll: %v: %s", err, stderrOf(err))
	}
	m, err := w.Client.Machine(ctx, name)
	if err != nil {
		return fmt.Errorf("enrolled machine %s (%s): %w", name, strings.TrimSpace(string(out)), err)
	}
	w.Machine = m.ID
	args := []string{"agent", "run", "--state-dir", o.AgentState, "--slots", fmt.Sprint(max(o.Slots, 1)), "--log-level", "warn"}
	if w.Agent, err = w.startChild("agent", args, append(env, profile("agent")...)); err != nil {
		return err
	}
	return w.waitOnline(ctx, 30*time.Second)
}

// Store is the path of the server's SQLite store (stop the server before
// writing to it).
func (w *world) Store() string { return filepath.Join(w.data, "deskrun.db") }

// stopServer stops the server; the agent stays and reconnects when
// startServer starts it again on the same address.
func (w *world) stopServer() error {
	err := w.Server.stop()
	w.Server = nil
	return err
}

// startServer starts the server again, as it was, and waits for it and
// (if there is one) for the agent to be back.
func (w *world) startServer(ctx context.Context) error {
	var err error
	if w.Server, err = w.startChild("server", w.serverArgs, w.serverEnv); err != nil {
		return err
	}
	if err := w.waitReady(ctx, w.data, 5*time.Minute); err != nil {
		return err
	}
	if w.Agent == nil {
		return nil
	}
	return w.waitOnline(ctx, time.Minute)
}

// waitReady polls until the server answers /readyz over TLS signed by the
// CA in its data directory, then reads the bootstrap admin token.
func (w *world) waitReady(ctx context.Context, data string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var hc *http.Client
	for {
		select {
		case <-w.Server.exited:
			return fmt.Errorf("server exited at start (%v): %s", w.Server.cmd.ProcessState, w.Server.out)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server not ready within %s: %s", limit, w.Server.out)
		}
		if hc == nil {
			ca, err := os.ReadFile(filepath.Join(data, "tls", "ca.crt"))
			if err != nil {
				continue
			}
			cfg, err := pki.PoolConfig(ca, "127.0.0.1")
			if err != nil {
				continue // partly written
			}
			w.CAPEM, hc = ca, &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, w.URL+"/readyz", nil)
		resp, err := hc.Do(req)
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			continue
		}
		tok, err := os.ReadFile(filepath.Join(data, server.BootstrapTokenFile))
		if err != nil {
			return fmt.Errorf("read admin token: %w", err)
		}
		w.token = strings.TrimSpace(string(tok))
		w.Client, err = client.New(w.URL, w.token, w.CAPEM)
		return err
	}
}

// waitOnline polls the machine until the server sees its agent connected.
func (w *world) waitOnline(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		m, err := w.Client.Machine(ctx, w.Machine)
		if err == nil && m.State == string(deskrun.MachineOnline) {
			return nil
		}
		select {
		case <-w.Agent.exited:
			return fmt.Errorf("agent exited before connecting (%v): %s", w.Agent.cmd.ProcessState, w.Agent.out)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent not online within %s (last: %v): %s", limit, err, w.Agent.out)
		}
	}
}

// waitRun waits for a run to end (GET /api/v1/runs/{id}?wait=) and
// fails unless it succeeded.
func (w *world) waitRun(ctx context.Context, id string) (wire.Run, error) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var r wire.Run
		if err := w.Client.Do(ctx, http.MethodGet, "/api/v1/runs/"+id+"?wait=60s", nil, &r); err != nil {
			return r, err
		}
		if deskrun.RunState(r.State).Terminal() {
			return r, nil
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("run %s still %s after 2 minutes", id, r.State)
		}
	}
}

// stop stops the agent, then the server (SIGTERM, so CPU profiles are
// written), and removes temporary data. It is safe on a half-started
// world and more than once.
func (w *world) stop() error {
	var errs []error
	for _, c := range []**child{&w.Agent, &w.Server} {
		if *c != nil {
			errs = append(errs, (*c).stop())
			*c = nil
		}
	}
	if w.tmp != "" {
		_ = os.RemoveAll(w.tmp)
		w.tmp = ""
	}
	return errors.Join(errs...)
}

// scrape reads the server's /metrics: the unlabelled samples by name.
func (w *world) scrape(ctx context.Context) (map[string]float64, error) {
	body, err := w.Client.Stream(ctx, "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scrape metrics: %w", err)
	}
	defer body.Close()
	return parseMetrics(body)
}

// parseMetrics reads the Prometheus text format's unlabelled samples.
func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = v
		}
	}
	return out, sc.Err()
}

// child is a deskrun process the bench started.
type child struct {
	name   string
	cmd    *exec.Cmd
	out    *tailBuffer
	exited chan struct{}
}

func (w *world) startChild(name string, args, env []string) (*child, error) {
	c := &child{name: name, out: &tailBuffer{max: 16 << 10}, exited: make(chan struct{})}
	c.cmd = exec.Command(w.command[0], append(w.command[1:len(w.command):len(w.command)], args...)...)
	c.cmd.Env = append(append(os.Environ(), w.env...), env...)
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		_ = c.cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

// Pid is the process's id (for /proc readings).
func (c *child) Pid() int { return c.cmd.Process.Pid }

// CPU is the CPU time the process has used, its reaped children's
// included (a run's processes are the agent's children).
func (c *child) CPU() (self, children time.Duration, err error) {
	return readCPUs(c.Pid())
}

// stop sends SIGTERM and kills the process if it has not stopped within
// 15 s.
func (c *child) stop() error {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
		return nil
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
		return fmt.Errorf("%s did not stop within 15s of SIGTERM; killed: %s", c.name, c.out)
	}
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}

// tailBuffer keeps the last max bytes a child wrote (for error messages).
// internal/desktop keeps Xvfb's stderr with the same few lines; a shared
// package for twenty lines was not worth it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.b))
}
