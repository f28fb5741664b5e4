//go:build linux && cgo

package sssdtest

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/wire"
)

// e2e is a `deskrun server` process, a `deskrun agent run` process and
// the CLI, as in test/e2e (whose helpers this copies, small).
type e2e struct {
	t        *testing.T
	bin, dir string
	env      []string
}

// start starts a long-running process; it is killed at cleanup.
func (w *e2e) start(name string, args ...string) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = w.env
	logf, err := os.Create(filepath.Join(w.dir, name+".log"))
	require.NoError(w.t, err)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(w.t, cmd.Start())
	w.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() })
}

// try runs a CLI command with stdin; out is stdout, plus stderr on error.
func (w *e2e) try(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, w.bin, args...)
	cmd.Env = w.env
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
}

func (w *e2e) run(args ...string) string {
	w.t.Helper()
	out, err := w.try("", args...)
	require.NoError(w.t, err, "deskrun %s: %s", strings.Join(args, " "), out)
	return out
}

func (w *e2e) eventually(what string, d time.Duration, cond func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			w.dumpLogs()
			w.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *e2e) dumpLogs() {
	logs, _ := filepath.Glob(filepath.Join(w.dir, "*.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		w.t.Logf("%s:\n%s", l, b)
	}
}

func (w *e2e) connection(name string) wire.Connection {
	var c wire.Connection
	require.NoError(w.t, json.Unmarshal([]byte(w.run("connection", "show", name, "--json")), &c))
	return c
}

// errorOf parses the JSON error envelope the CLI prints with --json.
func errorOf(t *testing.T, out string) *deskrun.Error {
	t.Helper()
	i := strings.Index(out, "{")
	require.GreaterOrEqual(t, i, 0, out)
	var env wire.ErrorEnvelope
	require.NoError(t, json.Unmarshal([]byte(out[i:]), &env), out)
	require.NotNil(t, env.Error, out)
	return env.Error
}

// buildDeskrun builds cmd/deskrun (cgo: NSS resolves the domain users).
func buildDeskrun(out string) error {
	cmd := exec.Command("go", "build", "-o", out, "./cmd/deskrun")
	cmd.Dir = filepath.Join(fixtureDir(), "..", "..")
	if b, err := cmd.CombinedOutput(); err != nil {
		return &buildError{err, string(b)}
	}
	return nil
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return "go build ./cmd/deskrun: " + e.err.Error() + "\n" + e.out }

// TestDesktopFlowAsADUser is item 6 of the domain issue, through the real
// binary: a server and an agent process whose agent.yaml points at the
// Samba DC, connections for AD users, a desktop flow run as one, and the
// DC stopped and restarted under a healthy connection.
func TestDesktopFlowAsADUser(t *testing.T) {
	if os.Geteuid() != 0 {
		need(t) // skips off CI, fails on CI
	}
	t0 := time.Now()
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "deskrun")
	built := make(chan error, 1)
	go func() { built <- buildDeskrun(bin) }() // alongside the DC's setup
	need(t)
	require.NoError(t, <-built)
	t.Logf("fixture and build: %v", time.Since(t0).Round(time.Millisecond))
	t1 := time.Now()

	// The agent must see the machine joined, as a real one is: its
	// DetectJoin reads /etc/sssd/sssd.conf, which the fixture leaves alone
	// (tests running alongside must see an unjoined machine). The agent
	// runs in its own mount namespace where /etc/sssd is the fixture's
	// config directory.
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatalf("unshare (util-linux) is needed to show the agent the fixture's sssd.conf: %v", err)
	}
	if st, err := os.Stat("/etc/sssd"); err != nil || !st.IsDir() {
		t.Fatalf("/etc/sssd is not a directory (sssd-common makes it): %v", err)
	}

	// Restore the DC and SSSD whatever happens (TestDomainUsers needs them).
	t.Cleanup(func() {
		if err := script("samba-ad.sh", "start"); err != nil {
			t.Errorf("restarting the DC: %v", err)
		}
		if err := script("sssd.sh", "start"); err != nil {
			t.Errorf("restarting sssd: %v", err)
		}
		_ = script("sssd.sh", "online")
	})
	// Nothing makes domain users' homes today; remove one if a run did.
	if _, err := os.Stat("/home/dr_ok"); os.IsNotExist(err) {
		t.Cleanup(func() { os.RemoveAll("/home/dr_ok") })
	}

	w := &e2e{t: t, bin: bin, dir: tmp}
	pamDir := filepath.Join(tmp, "pam")
	w.env = append(os.Environ(), "HOME="+tmp, "XDG_CONFIG_HOME="+filepath.Join(tmp, "config"),
		"DESKRUN_PAM_DIR="+filepath.Join(pamDir, "pam.d"), "DESKRUN_PAM_CONFIG_DIR="+filepath.Join(pamDir, "config"),
		"DESKRUN_FAILLOCK_DIR="+filepath.Join(pamDir, "faillock"), "DESKRUN_NOLOGIN_FILE="+filepath.Join(pamDir, "nologin"))
	w.run("agent", "install-pam", "--directory", "sss")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	data := filepath.Join(tmp, "data")
	w.start("server", bin, "server", "--data", data, "--listen", addr, "--heartbeat-interval", "200ms", "--agent-lease", "10s")
	w.eventually("server ready", 20*time.Second, func() bool {
		if _, err := os.Stat(filepath.Join(data, "admin.token")); err != nil {
			return false
		}
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	tok, err := os.ReadFile(filepath.Join(data, "admin.token"))
	require.NoError(t, err)
	w.env = append(w.env, "DESKRUN_SERVER=https://"+addr, "DESKRUN_TOKEN="+strings.TrimSpace(string(tok)),
		"DESKRUN_CA_FILE="+filepath.Join(data, "tls", "ca.crt"))

	state := filepath.Join(tmp, "agent")
	token := strings.TrimSpace(w.run("token", "create", "--enrollment"))
	w.run("agent", "enroll", "--token", token, "--name", "box", "--state-dir", state)

	// agent.yaml: the DC over LDAPS with its CA, the service account's
	// password sealed to this agent's key.
	cfg := filepath.Join(tmp, "agent.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("# deskrun agent\ndirectory:\n  url: ldaps://"+dcAddr+"\n  ca_file: "+
		filepath.Join(fx.dir, "dc", "tls", "ca.pem")+"\n  domain: "+domain+"\n  service_user: dr_svc@"+domain+"\n  timeout: 3s\n"), 0o600))
	out, err := w.try(password, "agent", "directory", "set-service-password", "--state-dir", state, "--config", cfg, "--password-stdin")
	require.NoError(t, err, out)
	b, err := os.ReadFile(cfg)
	require.NoError(t, err)
	require.Contains(t, string(b), "service_password_sealed: ")
	require.NotContains(t, string(b), password)

	w.start("agent", "unshare", "--mount", "--propagation", "private", "sh", "-c", `mount --bind /run/deskrun-sssd /etc/sssd && exec "$0" "$@"`,
		bin, "agent", "run", "--state-dir", state, "--agent-config", cfg)
	w.eventually("machine online", 20*time.Second, func() bool {
		var m wire.Machine
		out, err := w.try("", "machine", "show", "box", "--json")
		return err == nil && json.Unmarshal([]byte(out), &m) == nil && m.State == "online"
	})
	agentLog, _ := os.ReadFile(filepath.Join(tmp, "agent.log"))
	require.Contains(t, string(agentLog), "directory configured", "the agent did not load agent.yaml's directory")
	t.Logf("server, enroll, agent.yaml, agent online: %v", time.Since(t1).Round(time.Millisecond))

	t.Run("a desktop flow runs as the AD user", func(t *testing.T) {
		w.t = t
		out, err := w.try(password, "connection", "create", "ad", "--machine", "box", "--username", "dr_ok@"+domain, "--password-stdin", "--json")
		require.NoError(t, err, out)
		var res wire.ConnectionTestResult
		require.NoError(t, json.Unmarshal([]byte(out), &res), out)
		require.Equal(t, "healthy", res.Connection.State)
		require.NotNil(t, res.Logon)
		require.Equal(t, uint32(10001), res.Logon.Identity.UID)
		require.Contains(t, res.Logon.Identity.Groups, uint32(10100))
		require.Empty(t, res.Logon.Warnings)

		flow := filepath.Join(tmp, "flow")
		require.NoError(t, os.MkdirAll(flow, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(flow, "desktopflow.yaml"), []byte("name: adprobe\nrun: id -u; id -G\ntimeout: 1m\n"), 0o644))
		w.run("desktopflow", "push", flow)
		t2 := time.Now()
		out, err = w.try("", "desktopflow", "run", "adprobe", "--connection", "ad", "--wait", "60s", "--json")
		var r wire.Run
		if i := strings.Index(out, "{"); i >= 0 {
			_ = json.Unmarshal([]byte(out[i:]), &r)
		}
		require.NoError(t, err, out)
		require.Equal(t, "succeeded", r.State, out)
		logs := strings.Split(strings.TrimSpace(w.run("run", "logs", r.ID)), "\n")
		t.Logf("run %s in %v: %q", r.ID, time.Since(t2).Round(time.Millisecond), logs)
		require.Len(t, logs, 2)
		require.Equal(t, "10001", strings.TrimSpace(logs[0]))
		require.ElementsMatch(t, []string{"10000", "10100"}, strings.Fields(logs[1]), "the AD groups")
	})

	t.Run("a disabled AD user is refused with the directory's reason", func(t *testing.T) {
		w.t = t
		out, err := w.try(password, "connection", "create", "dis", "--machine", "box", "--username", "dr_disabled@"+domain, "--password-stdin", "--json")
		require.Error(t, err, out)
		e := errorOf(t, out)
		t.Logf("dr_disabled: %s %s [%v]", e.Reason, e.Status, e.Provider)
		require.Equal(t, deskrun.CodeWindowsIdentityIncorrect, e.Code)
		require.Equal(t, identity.ReasonAccountDisabled, e.Reason, "without agent.yaml's directory pam_sss's refusal stays AccountRestriction")
		require.Equal(t, "0xC0000072", e.Status)
		require.NotNil(t, e.Provider)
		require.Equal(t, "PAM_PERM_DENIED", e.Provider.Result)
		require.Contains(t, e.Provider.Detail, "userAccountControl 0x202")
	})

	t.Run("DC stopped: NoLogonServers; restarted: works again without an update", func(t *testing.T) {
		w.t = t
		// The logons above cached dr_ok's password in SSSD, which would
		// log it on offline (CachedCredentials, as TestDomainUsers shows):
		// start SSSD again from an empty cache, as on a machine where the
		// user never logged on.
		require.NoError(t, script("sssd.sh", "stop"))
		dbs, _ := filepath.Glob("/var/lib/sss/db/*")
		for _, f := range dbs {
			require.NoError(t, os.Remove(f))
		}
		require.NoError(t, script("sssd.sh", "start"))

		require.NoError(t, script("samba-ad.sh", "stop"))
		t3 := time.Now()
		out, err := w.try("", "connection", "test", "ad", "--json")
		require.Error(t, err, out)
		e := errorOf(t, out)
		t.Logf("DC stopped: %s %s [%v] (%v)", e.Reason, e.Status, e.Provider, time.Since(t3).Round(time.Millisecond))
		require.Equal(t, identity.ReasonNoLogonServers, e.Reason)
		require.Equal(t, "0xC000005E", e.Status)
		require.True(t, e.Retryable)
		require.False(t, e.Definitive)
		c := w.connection("ad")
		require.NotEqual(t, "broken", c.State, "a retryable failure must not break the connection")

		require.NoError(t, script("samba-ad.sh", "start"))
		require.NoError(t, script("sssd.sh", "online"))
		t4 := time.Now()
		var tries int
		for {
			tries++
			out, err = w.try("", "connection", "test", "ad", "--json")
			if err == nil || tries == 3 || !errorOf(t, out).Retryable {
				break
			}
			time.Sleep(time.Second) // each failure counts in pam_faillock (deny=5)
		}
		require.NoError(t, err, "after the DC came back (%d tries): %s", tries, out)
		var res wire.ConnectionTestResult
		require.NoError(t, json.Unmarshal([]byte(out), &res), out)
		require.Equal(t, "healthy", res.Connection.State)
		require.Equal(t, uint32(10001), res.Logon.Identity.UID)
		require.Empty(t, res.Logon.Warnings, "an online logon, not a cached one")
		t.Logf("DC back: healthy after %d test(s), %v", tries, time.Since(t4).Round(time.Millisecond))
	})
	w.t = t
	if t.Failed() {
		w.dumpLogs()
	}
	t.Logf("total %v", time.Since(t0).Round(time.Millisecond))
}
