package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/client"
	"github.com/deskrun/deskrun/internal/desktopflow"
	"github.com/deskrun/deskrun/internal/identity/pam"
	"github.com/deskrun/deskrun/internal/wire"
)

// Password hashes of the benchmark's users (chpasswd -c).
const (
	HashSHA512   = "sha512"
	HashYescrypt = "yescrypt"
)

// UserPrefix starts the name of every local user the desktop scenarios
// create (and delete at the end).
const UserPrefix = "drb_"

const (
	benchPassword = "Bench-Run-Secret-42!"
	// The flow stamps its start from inside the user's process: /bin/sh
	// (dash) forks and execs date, whose format writes "t=<ns since the
	// epoch>" straight into $DESKRUN_OUTPUT (no subshell). The calibrating
	// variant stamps a second time right after, so u − t is what one
	// fork+exec of date costs on this machine: the stamp t is late by
	// about that much (dash's own start is not in it).
	flowPlain = "bench-start"
	flowCal   = "bench-start-cal"
	runPlain  = `date +t=%s%N >"$DESKRUN_OUTPUT"`
	runCal    = `date +t=%s%N >"$DESKRUN_OUTPUT"; date +u=%s%N >>"$DESKRUN_OUTPUT"`
)

// DesktopEnvOptions configure the world of the desktop-flow scenarios.
type DesktopEnvOptions struct {
	// Users lists the hash of each local user to create; each gets a
	// connection named drb-<hash>-<i>.
	Users []string
	// Slots is the agent's machine slots.
	Slots int
	// Executable is the deskrun binary the server and agent processes run;
	// empty means build one (go build ./cmd/deskrun).
	Executable string
	// Data holds the server's and the agent's data; empty means a fresh
	// temporary directory, removed afterwards.
	Data string
	// SQLiteSync is FULL (the default) or NORMAL.
	SQLiteSync string
	// ProfileDir, if set, receives CPU profiles of the server and the
	// agent (server.pprof, agent.pprof).
	ProfileDir string
	// Progress, if set, receives one line per phase.
	Progress io.Writer
}

// DesktopEnv is a server process, an agent process (root) logging users on
// through a private PAM stack, real local users and their connections, and
// the benchmark's desktop flows.
type DesktopEnv struct {
	*world               // Client, Machine, Server, Agent
	Users       []string // local user names, in DesktopEnvOptions.Users order
	Connections []string // connection names, likewise

	base     string // 0711: binary, PAM stack, agent state, default data
	progress func(string, ...any)
}

// NeedRoot says why the desktop scenarios cannot run as this user, or nil.
func NeedRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("the run, burst and flow scenarios need root: they create local users (useradd, chpasswd), install a private PAM stack, and run flows as those users through PAM and setuid; run them as root")
	}
	return nil
}

// StartDesktopEnv sets the world up. On error everything made so far is
// undone (users deleted, agent and server stopped, temporary data
// removed); otherwise Close does it.
func StartDesktopEnv(ctx context.Context, o DesktopEnvOptions) (_ *DesktopEnv, err error) {
	if err := NeedRoot(); err != nil {
		return nil, err
	}
	if len(o.Users) == 0 {
		return nil, errors.New("desktop bench: no users")
	}
	env := &DesktopEnv{progress: func(format string, a ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", a...)
		}
	}}
	defer func() {
		if err != nil {
			env.Close()
		}
	}()
	if _, err := RaiseFileLimit(); err != nil {
		return nil, err
	}
	if env.base, err = os.MkdirTemp("", "deskrun-bench-run-"); err != nil {
		return nil, err
	}
	// The users reach their run directories below base/agent/runs.
	if err := os.Chmod(env.base, 0o711); err != nil {
		return nil, err
	}
	exe := o.Executable
	if exe == "" {
		t0 := time.Now()
		if exe, err = buildDeskrun(ctx, env.base); err != nil {
			return nil, err
		}
		env.progress("built %s in %s", exe, time.Since(t0).Round(time.Millisecond))
	}

	// Users first: they are what must never be left behind.
	env.Users, err = createUsers(ctx, o.Users)
	if err != nil {
		return nil, err
	}
	env.progress("created users %s", strings.Join(env.Users, " "))

	stack := pam.Stack{
		PAMDir: filepath.Join(env.base, "pam.d"), ConfigDir: filepath.Join(env.base, "pam"),
		FaillockDir: filepath.Join(env.base, "faillock"), NologinFile: filepath.Join(env.base, "nologin"),
		Deny: 5, UnlockTime: 600,
	}
	if _, err := pam.Install(stack); err != nil {
		return nil, fmt.Errorf("install the PAM stack: %w", err)
	}

	data := o.Data
	if data == "" {
		data = filepath.Join(env.base, "data")
	}
	// The agent's state directory must be searchable by the users (their
	// run directories are below it), like the default /var/lib/deskrun.
	env.world = &world{}
	err = env.start(ctx, worldOptions{Command: []string{exe}, Data: filepath.Join(data, "server"), AgentState: filepath.Join(env.base, "agent"),
		AgentName: "bench-box", Slots: o.Slots, SQLiteSync: o.SQLiteSync, ProfileDir: o.ProfileDir,
		AgentEnv: []string{"DESKRUN_PAM_DIR=" + stack.PAMDir, "DESKRUN_PAM_CONFIG_DIR=" + stack.ConfigDir,
			"DESKRUN_FAILLOCK_DIR=" + stack.FaillockDir, "DESKRUN_NOLOGIN_FILE=" + stack.NologinFile}})
	if err != nil {
		return nil, err
	}

	// Connections through the API with a plain password: each is sealed
	// to the agent's key and tested there (one real PAM logon).
	for i, u := range env.Users {
		name := fmt.Sprintf("drb-%s-%d", o.Users[i], i)
		if _, err := env.Client.CreateConnection(ctx, wire.ConnectionCreate{Name: name, Machine: env.Machine, Username: u,
			Password: wire.Secret(benchPassword)}); err != nil {
			return nil, fmt.Errorf("create connection %s for %s: %w", name, u, err)
		}
		env.Connections = append(env.Connections, name)
	}
	for name, run := range map[string]string{flowPlain: runPlain, flowCal: runCal} {
		if err := pushFlow(ctx, env.Client, env.base, name, run); err != nil {
			return nil, err
		}
	}
	env.progress("server %s, agent %s (%d slots), %d connections, flows pushed", env.URL, env.Machine, max(o.Slots, 1), len(env.Connections))
	return env, nil
}

func pushFlow(ctx context.Context, cl *client.Client, base, name, run string) error {
	dir, err := os.MkdirTemp(base, "flow-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	outs := "  - name: t\n"
	if strings.Contains(run, "u=") {
		outs += "  - name: u\n"
	}
	man := fmt.Sprintf("name: %s\ndescription: stamps its start (ns) and exits\noutputs:\n%srun: '%s'\ntimeout: 1m\n", name, outs, run)
	if err := os.WriteFile(filepath.Join(dir, desktopflow.ManifestFile), []byte(man), 0o644); err != nil {
		return err
	}
	archive, _, _, err := desktopflow.Pack(dir)
	if err != nil {
		return fmt.Errorf("pack flow %s: %w", name, err)
	}
	if _, _, err := cl.PushDesktopFlow(ctx, archive); err != nil {
		return fmt.Errorf("push flow %s: %w", name, err)
	}
	return nil
}

// createUsers makes one local user per hash (HashSHA512, HashYescrypt)
// with useradd and chpasswd -c, all with benchPassword, named
// drb_<random tag><hash initial><i>. It returns the users made so far
// even with an error: the caller deletes them (deleteUsers).
func createUsers(ctx context.Context, hashes []string) ([]string, error) {
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	tag := hex.EncodeToString(rnd[:])
	users := make([]string, 0, len(hashes))
	for i, h := range hashes {
		method := map[string]string{HashSHA512: "SHA512", HashYescrypt: "YESCRYPT"}[h]
		if method == "" {
			return users, fmt.Errorf("bench: unknown hash %q (sha512 or yescrypt)", h)
		}
		name := fmt.Sprintf("%s%s%c%d", UserPrefix, tag, h[0], i)
		if err := shadowTool(ctx, "useradd", "-M", "-d", "/nonexistent", "-s", "/bin/sh", "-U", name); err != nil {
			return users, err
		}
		users = append(users, name)
		cmd := exec.CommandContext(ctx, "chpasswd", "-c", method)
		cmd.Stdin = strings.NewReader(name + ":" + benchPassword + "\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			return users, fmt.Errorf("chpasswd -c %s: %v\n%s", method, err, out)
		}
	}
	return users, nil
}

// deleteUsers deletes users made by createUsers, -f: even if a process
// of the user survived its run.
func deleteUsers(users []string) error {
	var errs []error
	for _, u := range users {
		if err := shadowTool(context.Background(), "userdel", "-f", u); err != nil {
			errs = append(errs, fmt.Errorf("could not delete user %s: %w", u, err))
		}
	}
	return errors.Join(errs...)
}

// shadowTool runs useradd and friends, retrying while another process
// holds the passwd lock.
func shadowTool(ctx context.Context, args ...string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		if err == nil {
			return nil
		}
		if !strings.Contains(string(out), "lock") || time.Now().After(deadline) {
			return fmt.Errorf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Close stops the agent and the server, deletes the users and removes
// the temporary files. It is safe on a half-made environment.
func (e *DesktopEnv) Close() {
	if e.world != nil {
		if err := e.stop(); err != nil {
			e.progress("warning: %v", err)
		}
	}
	if err := deleteUsers(e.Users); err != nil {
		e.progress("warning: %v", err)
	}
	e.Users = nil
	if e.base != "" {
		_ = os.RemoveAll(e.base)
		e.base = ""
	}
}

// runStamp is one finished run with the stamps the flow wrote.
type runStamp struct {
	run   wire.Run
	start time.Time // t: the flow's first action
	date  time.Duration
}

// startRun triggers a run through the HTTP API (POST
// /api/v1/desktopflows/{flow}/runs).
func (e *DesktopEnv) startRun(ctx context.Context, flow, conn string) (wire.Run, error) {
	var r wire.Run
	err := e.Client.Do(ctx, "POST", "/api/v1/desktopflows/"+url.PathEscape(flow)+"/runs", wire.RunCreate{Connection: conn}, &r)
	return r, err
}

// waitRun waits for a run to end and reads its stamps; it fails unless
// the run succeeded.
func (e *DesktopEnv) waitRun(ctx context.Context, id string) (*runStamp, error) {
	r, err := e.world.waitRun(ctx, id)
	if err != nil {
		return nil, err
	}
	return stampOf(r)
}

func stampOf(r wire.Run) (*runStamp, error) {
	if r.State != string(deskrun.RunSucceeded) {
		return nil, fmt.Errorf("run %s ended %s: %v", r.ID, r.State, r.Error)
	}
	var outs map[string]any
	if err := json.Unmarshal(r.Outputs, &outs); err != nil {
		return nil, fmt.Errorf("run %s: outputs %s: %w", r.ID, r.Outputs, err)
	}
	ns := func(k string) (int64, error) {
		s, _ := outs[k].(string)
		return strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	}
	t, err := ns("t")
	if err != nil {
		return nil, fmt.Errorf("run %s: output t %v: %w", r.ID, outs["t"], err)
	}
	st := &runStamp{run: r, start: time.Unix(0, t)}
	if u, err := ns("u"); err == nil {
		st.date = time.Duration(u - t)
	}
	return st, nil
}

func (st *runStamp) timing(name string) time.Duration {
	var m map[string]int64
	_ = json.Unmarshal(st.run.Timings, &m)
	return time.Duration(m[name]) * time.Microsecond
}
