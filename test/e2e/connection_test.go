package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/agent"
	"github.com/deskrun/deskrun/internal/control"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/pam"
	"github.com/deskrun/deskrun/internal/notify"
	"github.com/deskrun/deskrun/internal/seal"
	"github.com/deskrun/deskrun/internal/server"
	"github.com/deskrun/deskrun/internal/wire"
	"github.com/deskrun/deskrun/test/world"
)

// The PAM fixture: real local users (prefix drt_e2e_) in every state, and
// the stack `deskrun agent install-pam` writes, in a private directory.
const (
	fixturePrefix = "drt_e2e_"
	fixturePW     = world.FixturePassword
)

var pamFx = &world.PAM{Name: "e2e", Prefix: fixturePrefix}

func needPAM(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("connection tests need root (real PAM users), and CI runs as root")
		}
		t.Skip("needs root: run as root or via .ci/run")
	}
	pamFx.Setup(t)
}

// newUser makes a throwaway local user with a SHA-512 password (fast).
func newUser(t *testing.T, suffix, password string) string {
	t.Helper()
	name := fixturePrefix + suffix
	_ = exec.Command("userdel", name).Run()
	out, err := exec.Command("useradd", "-M", "-d", "/nonexistent", "-s", "/bin/bash", name).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { _ = exec.Command("userdel", name).Run() })
	setPassword(t, name, password)
	return name
}

func setPassword(t *testing.T, name, password string) {
	t.Helper()
	cmd := exec.Command("chpasswd", "-c", "SHA512")
	cmd.Stdin = strings.NewReader(name + ":" + password + "\n")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
}

// connWorld is a server process and an agent process with PAM.
func connWorld(t *testing.T, serverArgs ...string) *e2eWorld {
	needPAM(t)
	w := newWorld(t)
	w.Env = append(w.Env, pamFx.Env()...)
	w.ServerArgs = serverArgs
	w.StartServer()
	w.Enroll("box")
	w.Eventually("machine online", func() bool { return w.machine("box").State == "online" })
	return w
}

// create runs `connection create` with a password on stdin.
func (w *e2eWorld) create(name, username, password string, extra ...string) (string, error) {
	args := append([]string{"connection", "create", name, "--machine", "box", "--username", username, "--password-stdin"}, extra...)
	return w.TryStdin(password, args...)
}

func (w *e2eWorld) connection(name string) wire.Connection {
	var c wire.Connection
	require.NoError(w.T, json.Unmarshal([]byte(w.Run("connection", "show", name, "--json")), &c))
	return c
}

func (w *e2eWorld) connectionCount() int {
	var l wire.ConnectionList
	require.NoError(w.T, json.Unmarshal([]byte(w.Run("connection", "list", "--json")), &l))
	return len(l.Connections)
}

func (w *e2eWorld) audit(action string) []wire.AuditEvent {
	var l wire.AuditList
	require.NoError(w.T, json.Unmarshal([]byte(w.Run("audit", "list", "--action", action, "--json", "--limit", "1000")), &l))
	return l.Events
}

// errorOf parses the JSON error envelope the CLI prints with --json.
func errorOf(t *testing.T, out string) *deskrun.Error {
	t.Helper()
	var env wire.ErrorEnvelope
	require.NoError(t, json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &env), out)
	return env.Error
}

// failures counts a user's failed attempts in pam_faillock's tally.
func failures(t *testing.T, user string) int {
	out, _ := exec.Command("faillock", "--dir", filepath.Join(pamFx.Dir(), "faillock"), "--user", user).CombinedOutput()
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if len(l) > 0 && l[0] >= '0' && l[0] <= '9' { // one line per failure, starting with its date
			n++
		}
	}
	return n
}

func TestConnections(t *testing.T) {
	t.Parallel()
	w := connWorld(t)
	ok := fixturePrefix + "ok"

	t.Run("create ok, sealed on the client", func(t *testing.T) {
		out, err := w.create("ok", ok, fixturePW, "--json")
		require.NoError(t, err, out)
		var res wire.ConnectionTestResult
		require.NoError(t, json.Unmarshal([]byte(out), &res))
		require.Equal(t, "healthy", res.Connection.State)
		u, err := user.Lookup(ok)
		require.NoError(t, err)
		require.Equal(t, u.Uid, strconv.Itoa(int(res.Logon.Identity.UID)))
		require.Len(t, res.Connection.Credentials, 1)
		// A duplicate name is refused before any logon.
		out, err = w.create("ok", ok, fixturePW, "--json")
		require.Error(t, err)
		require.Equal(t, deskrun.CodeConflict, errorOf(t, out).Code)
	})
	t.Run("create ok, sealed by the server", func(t *testing.T) {
		out, err := w.create("ok-server", ok, fixturePW, "--server-seal")
		require.NoError(t, err, out)
		require.Contains(t, out, "healthy")
		seals := w.audit(deskrun.AuditCredentialSeal)
		require.NotEmpty(t, seals)
		require.Equal(t, "ok-server", seals[0].ConnectionName)
	})

	refused := []struct {
		name, user, password, reason string
		status                       string
	}{
		{"wrong", ok, "not-the-password", identity.ReasonWrongPassword, "0xC000006D"},
		{"locked", fixturePrefix + "locked", fixturePW, identity.ReasonAccountDisabled, "0xC0000072"},
		{"expired", fixturePrefix + "acctexpired", fixturePW, identity.ReasonAccountExpired, "0xC0000193"},
		{"pwexpired", fixturePrefix + "pwexpired", fixturePW, identity.ReasonPasswordExpired, "0xC0000071"},
		{"nouser", fixturePrefix + "nobody-here", fixturePW, identity.ReasonNoSuchUser, "0xC0000064"},
	}
	for _, c := range refused {
		t.Run("refused "+c.name, func(t *testing.T) {
			before := w.connectionCount()
			out, err := w.create("r-"+c.name, c.user, c.password, "--json")
			require.Error(t, err)
			e := errorOf(t, out)
			require.Equal(t, deskrun.CodeWindowsIdentityIncorrect, e.Code, out)
			require.Equal(t, c.reason, e.Reason, out)
			require.Equal(t, c.status, e.Status)
			require.NotZero(t, e.StatusDecimal)
			require.Equal(t, "box", e.Machine)
			require.NotEmpty(t, e.Resolution)
			require.NotNil(t, e.Provider)
			require.Equal(t, before, w.connectionCount(), "a refused connection was saved")
		})
	}

	t.Run("expiry warning", func(t *testing.T) {
		out, err := w.create("warn", fixturePrefix+"warn", fixturePW)
		require.NoError(t, err, out)
		c := w.connection("warn")
		require.Equal(t, "expiring", c.State)
		require.Equal(t, identity.ReasonPasswordExpiresSoon, c.Reason)
		require.InDelta(t, 5, c.ExpiresInDays, 1)
		require.Contains(t, w.Run("connection", "list"), "expiring: password expires in")
	})

	t.Run("bad input never reaches the machine", func(t *testing.T) {
		attempts := len(w.audit(deskrun.AuditLogonAttempt))
		for _, c := range []struct{ pw, reason string }{
			{"", identity.ReasonEmptyPassword},
			{"a\x00b", identity.ReasonPasswordFormatInvalid},
			{"line\nbreak", identity.ReasonPasswordFormatInvalid},
			{strings.Repeat("x", 1<<20), identity.ReasonPasswordFormatInvalid},
		} {
			for _, extra := range [][]string{nil, {"--server-seal"}} {
				out, err := w.TryStdin(c.pw+"\n", append([]string{"connection", "create", "bad", "--machine", "box", "--username", ok, "--password-stdin", "--json"}, extra...)...)
				require.Error(t, err)
				require.Equal(t, c.reason, errorOf(t, out).Reason, out)
			}
		}
		out, err := w.create("bad", "a\\b\\c", fixturePW, "--json")
		require.Error(t, err)
		require.Equal(t, identity.ReasonUpnFormatInvalid, errorOf(t, out).Reason)
		out, err = w.TryStdin(fixturePW, "connection", "create", "bad", "--machine", "nowhere", "--username", ok, "--password-stdin", "--json")
		require.Error(t, err)
		require.Equal(t, deskrun.CodeNotFound, errorOf(t, out).Code)
		require.Equal(t, attempts, len(w.audit(deskrun.AuditLogonAttempt)), "bad input made a logon attempt")
	})

	t.Run("password changed underneath: one failed attempt, then the breaker", func(t *testing.T) {
		u := newUser(t, "rot", "First-pass-1")
		out, err := w.create("rot", u, "First-pass-1")
		require.NoError(t, err, out)
		setPassword(t, u, "Second-pass-2")
		var wg sync.WaitGroup
		codes := make([]string, 8)
		for i := range codes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, err := w.Try("connection", "test", "rot", "--json")
				if err != nil {
					e := errorOf(t, out)
					codes[i] = e.Code + "/" + e.Reason
				}
			}()
		}
		wg.Wait()
		wrong, broken := 0, 0
		for _, c := range codes {
			switch c {
			case deskrun.CodeWindowsIdentityIncorrect + "/" + identity.ReasonWrongPassword:
				wrong++
			case deskrun.CodeConnectionBroken + "/" + identity.ReasonWrongPassword:
				broken++
			}
		}
		require.Equal(t, 1, wrong, "%v", codes)
		require.Equal(t, len(codes)-1, broken, "%v", codes)
		require.Equal(t, 1, failures(t, u), "PAM saw more than one failed attempt")
		c := w.connection("rot")
		require.Equal(t, "broken", c.State)
		require.Equal(t, identity.ReasonWrongPassword, c.Reason)
		require.Contains(t, w.Run("connection", "list"), "broken: WrongPassword 0xC000006D")

		// Updating the password with a wrong one is refused and keeps it broken;
		// the right one heals it.
		out, err = w.TryStdin("Still-wrong-3", "connection", "update", "rot", "--password-stdin", "--json")
		require.Error(t, err)
		require.Equal(t, identity.ReasonWrongPassword, errorOf(t, out).Reason)
		require.Equal(t, "broken", w.connection("rot").State)
		out, err = w.TryStdin("Second-pass-2", "connection", "update", "rot", "--password-stdin")
		require.NoError(t, err, out)
		require.Equal(t, "healthy", w.connection("rot").State)
	})

	t.Run("must change after creation", func(t *testing.T) {
		u := newUser(t, "chg", "Change-me-1")
		out, err := w.create("chg", u, "Change-me-1")
		require.NoError(t, err, out)
		require.NoError(t, exec.Command("chage", "-d", "0", u).Run())
		out, err = w.Try("connection", "test", "chg", "--json")
		require.Error(t, err)
		require.Equal(t, identity.ReasonPasswordMustChange, errorOf(t, out).Reason)
		require.Equal(t, "broken", w.connection("chg").State)
		// Only an admin may force another attempt; this token is admin.
		require.NoError(t, exec.Command("chage", "-d", time.Now().Format("2006-01-02"), u).Run())
		out, err = w.Try("connection", "test", "chg")
		require.Error(t, err, "a broken connection must be refused without --force")
		require.Contains(t, out, "ConnectionBroken")
		out, err = w.Try("connection", "test", "chg", "--force")
		require.NoError(t, err, out)
		require.Equal(t, "healthy", w.connection("chg").State)
	})

	t.Run("offline machine", func(t *testing.T) {
		w.Kill(w.Agent)
		w.Eventually("machine offline", func() bool { return w.machine("box").State == "offline" })
		out, err := w.create("off", ok, fixturePW, "--json")
		require.Error(t, err)
		require.Equal(t, deskrun.CodeMachineOffline, errorOf(t, out).Code)
		out, err = w.create("off", ok, fixturePW, "--skip-test")
		require.NoError(t, err, out)
		require.Equal(t, "untested", w.connection("off").State)
		w.Agent = w.Start("agent", "run", "--state-dir", w.AgentDir)
		w.Eventually("machine online", func() bool { return w.machine("box").State == "online" })
	})

	t.Run("secrets are nowhere", func(t *testing.T) {
		files, _ := filepath.Glob(filepath.Join(w.Dir, "data", "deskrun.db*"))
		require.NotEmpty(t, files)
		logs, _ := filepath.Glob(filepath.Join(w.Dir, "*.log"))
		files = append(files, logs...)
		for _, f := range files {
			b, err := os.ReadFile(f)
			require.NoError(t, err)
			for _, secret := range []string{fixturePW, "First-pass-1", "Second-pass-2", "Still-wrong-3", "Change-me-1", "not-the-password"} {
				require.False(t, bytes.Contains(b, []byte(secret)), "%s holds a password", f)
			}
		}
		out := w.Run("audit", "list", "--json", "--limit", "1000")
		require.NotContains(t, out, fixturePW)
	})
}

// TestConnectionCiphertexts sends sealed blobs by hand: tampered, and
// sealed for another machine.
func TestConnectionCiphertexts(t *testing.T) {
	t.Parallel()
	w := connWorld(t)
	cl := w.APIClient()
	ctx := t.Context()
	m, err := cl.Machine(ctx, "box")
	require.NoError(t, err)
	id := deskrun.NewID("c", time.Now())
	good, err := seal.Seal(m.SealKey, deskrun.SealInfo(id, m.ID), []byte(fixturePW))
	require.NoError(t, err)
	try := func(sealed *wire.Sealed, connID string) *deskrun.Error {
		_, err := cl.CreateConnection(ctx, wire.ConnectionCreate{ID: connID, Name: "blob", Machine: "box", Username: fixturePrefix + "ok", Sealed: sealed})
		var de *deskrun.Error
		require.ErrorAs(t, err, &de)
		return de
	}
	tampered := bytes.Clone(good)
	tampered[len(tampered)-3] ^= 0x40
	require.Equal(t, deskrun.CodeSealedCredentialInvalid, try(&wire.Sealed{MachineID: m.ID, KeyID: m.SealKeyID, Ciphertext: tampered}, id).Code)
	// Sealed to another machine's key, presented as this machine's.
	other, err := seal.GenerateKey()
	require.NoError(t, err)
	foreign, err := seal.Seal(other.Public, deskrun.SealInfo(id, m.ID), []byte(fixturePW))
	require.NoError(t, err)
	require.Equal(t, deskrun.CodeSealedCredentialInvalid, try(&wire.Sealed{MachineID: m.ID, KeyID: m.SealKeyID, Ciphertext: foreign}, id).Code)
	// Bound to another connection id.
	require.Equal(t, deskrun.CodeSealedCredentialInvalid, try(&wire.Sealed{MachineID: m.ID, KeyID: m.SealKeyID, Ciphertext: good}, deskrun.NewID("c", time.Now())).Code)
	// Claiming another key id is refused by the server before the machine.
	require.Equal(t, deskrun.CodeSealedCredentialInvalid, try(&wire.Sealed{MachineID: m.ID, KeyID: seal.KeyID(other.Public), Ciphertext: foreign}, id).Code)
	// And the good one works.
	res, err := cl.CreateConnection(ctx, wire.ConnectionCreate{ID: id, Name: "blob", Machine: "box", Username: fixturePrefix + "ok",
		Sealed: &wire.Sealed{MachineID: m.ID, KeyID: m.SealKeyID, Ciphertext: good}})
	require.NoError(t, err)
	require.Equal(t, "healthy", res.Connection.State)
}

// TestOldAgentAndWebhook runs the server and an agent in this process: the
// agent speaks protocol 1 (no reasons), and a connection that breaks sends
// a signed webhook.
func TestOldAgentAndWebhook(t *testing.T) {
	t.Parallel()
	needPAM(t)
	secret := "webhook-secret-0123456789"
	events := make(chan notify.Event, 4)
	hook := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if err := notify.Verify([]byte(secret), r.Header.Get(notify.SignatureHeader), b, time.Now(), 5*time.Minute); err != nil {
			http.Error(rw, err.Error(), http.StatusUnauthorized)
			return
		}
		var ev notify.Event
		_ = json.Unmarshal(b, &ev)
		events <- ev
	}))
	defer hook.Close()

	cfg := server.DefaultConfig()
	cfg.Data, cfg.Listen = t.TempDir(), world.FreePort(t)
	cfg.NotifyURL, cfg.NotifySecret = hook.URL, secret
	s := &server.Server{Config: cfg, Log: slog.New(slog.DiscardHandler), Version: "test"}
	require.NoError(t, s.Start(t.Context()))
	defer s.Stop()
	ctx := t.Context()
	_, tok, err := s.Control.CreateToken(ctx, wire.TokenCreate{Kind: "enrollment"})
	require.NoError(t, err)
	stateDir := t.TempDir()
	_, err = agent.Enroll(ctx, agent.EnrollOptions{Token: tok, Name: "old", StateDir: stateDir, Info: agent.HostInfo(agent.DefaultHostFiles, 1)})
	require.NoError(t, err)
	stack := pam.DefaultStack()
	stack.PAMDir, stack.ConfigDir = filepath.Join(pamFx.Dir(), "pam.d"), filepath.Join(pamFx.Dir(), "config")
	stack.FaillockDir, stack.NologinFile = filepath.Join(pamFx.Dir(), "faillock"), filepath.Join(pamFx.Dir(), "nologin")
	actx, cancel := context.WithCancel(context.Background())
	defer cancel()
	connected := make(chan struct{}, 1)
	ag := &agent.Agent{StateDir: stateDir, Log: slog.New(slog.DiscardHandler), Info: agent.HostInfo(agent.DefaultHostFiles, 1),
		ProtocolVersion: 1, Logon: pam.New(pam.Config{Stack: stack}),
		OnConnected: func() { connected <- struct{}{} }}
	go func() { _ = ag.Run(actx) }()
	<-connected

	admin := control.Actor{ID: "token:test", Role: deskrun.RoleAdmin}
	u := newUser(t, "old", "Old-agent-1")
	_, _, err = s.Control.CreateConnection(ctx, admin, wire.ConnectionCreate{Name: "old", Machine: "old", Username: u, Password: wire.Secret("wrong-one")})
	var de *deskrun.Error
	require.ErrorAs(t, err, &de)
	require.Equal(t, deskrun.CodeWindowsIdentityIncorrect, de.Code)
	require.Empty(t, de.Reason, "an old agent has no reasons")
	require.Contains(t, de.Resolution, "Update the agent on old")

	// Saved with the right password, then broken: the webhook fires, signed.
	_, _, err = s.Control.CreateConnection(ctx, admin, wire.ConnectionCreate{Name: "old", Machine: "old", Username: u, Password: wire.Secret("Old-agent-1")})
	require.NoError(t, err)
	setPassword(t, u, "Old-agent-2")
	_, _, err = s.Control.TestConnection(ctx, admin, "old", false)
	require.Error(t, err)
	select {
	case ev := <-events:
		require.Equal(t, "connection.broken", ev.Type)
		require.Equal(t, "old", ev.Connection)
		require.Equal(t, "old", ev.Machine)
	case <-time.After(10 * time.Second):
		t.Fatal("no webhook for the broken connection")
	}
}
