// Package browser drives the web console in a real Chromium (headless,
// through chromedp) against real deskrun server and agent processes and
// real PAM users, as an operator would. Screenshots of the pages are saved
// under artifacts/.
package browser

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/test/world"
)

const (
	fixturePrefix = "drt_web_"
	fixturePW     = world.FixturePassword
	chromium      = "/usr/lib/chromium/chromium" // the binary behind Debian's /usr/bin/chromium wrapper
)

var pamFx = &world.PAM{Name: "browser", Prefix: fixturePrefix}

func TestMain(m *testing.M) { world.Main(m, "browser", pamFx) }

// need skips off CI, and fails under CI, when a prerequisite is missing:
// root (real PAM users), Chromium, Xvfb.
func need(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (real PAM users)")
	}
	for _, p := range []string{chromium, "/usr/bin/Xvfb"} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p+" (apt-get install chromium xvfb)")
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("browser tests need %s, and CI provides them (scripts/test)", strings.Join(missing, ", "))
	}
	t.Skipf("browser tests need %s: run as root via .ci/run", strings.Join(missing, ", "))
}

// webWorld is a server process, an agent process (machine "box") and the CLI.
type webWorld struct{ *world.World }

func newWorld(t *testing.T) *webWorld {
	need(t)
	pamFx.Setup(t)
	w := &webWorld{world.New(t)}
	w.Patience = 30 * time.Second
	w.Env = append(w.Env, pamFx.Env()...)
	w.StartServer()
	w.Eventually("server answers", func() bool { _, err := w.Try("machine", "list"); return err == nil })
	w.Enroll("box")
	w.Eventually("machine online", func() bool { return strings.Contains(w.Run("machine", "list"), "online") })
	return w
}

// spki pins the server's certificate for Chromium: the base64 SHA-256 of
// its public key, for --ignore-certificate-errors-spki-list. Only this
// server's certificate is accepted, not any.
func (w *webWorld) spki() string {
	b, err := os.ReadFile(filepath.Join(w.Dir, "data", "tls", "server.crt"))
	require.NoError(w.T, err)
	blk, _ := pem.Decode(b)
	require.NotNil(w.T, blk)
	cert, err := x509.ParseCertificate(blk.Bytes)
	require.NoError(w.T, err)
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// browser starts a headless Chromium with its own profile.
func (w *webWorld) browser(t *testing.T) context.Context {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.UserDataDir(shortTemp(t)),
		chromedp.Env("TMPDIR="+shortTemp(t)),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("ignore-certificate-errors-spki-list", w.spki()),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, 5*time.Minute)
	t.Cleanup(func() { cancelT(); cancelB(); cancelA() })
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate("about:blank")))
	return ctx
}

// shortTemp is a temporary directory with a short path: Chromium's
// singleton socket path must fit in a sockaddr_un (108 bytes), which
// t.TempDir's long names under a subtest do not.
func shortTemp(t *testing.T) string {
	dir, err := os.MkdirTemp("", "cr")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// shot saves a full-page screenshot as artifacts/NAME.png.
func shot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll("artifacts", 0o755))
	require.NoError(t, os.WriteFile(filepath.Join("artifacts", name+".png"), png, 0o644))
}

func (w *webWorld) signIn(t *testing.T, ctx context.Context, user, password string) {
	t.Helper()
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(w.URL+"/"),
		chromedp.WaitVisible(chromedp.ID("user")),
		chromedp.SendKeys(chromedp.ID("user"), user),
		chromedp.SendKeys(chromedp.ID("password"), password),
		chromedp.Click(chromedp.ID("signin-user")),
		chromedp.WaitVisible(chromedp.CSS("nav[aria-label=Main]")),
	))
}

func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	require.NoError(t, err)
	return s
}

// waitText waits until the element's text contains want.
func waitText(t *testing.T, ctx context.Context, sel, want string) {
	t.Helper()
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](fmt.Sprintf(`(document.querySelector(%q)?.textContent || "").includes(%q)`, sel, want),
		chromedp.WithPollingTimeout(60*time.Second), chromedp.WithPollingInterval(50*time.Millisecond)))
	require.NoError(t, err, "waiting for %q in %s; it has %q", want, sel, func() string {
		s, _ := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`document.querySelector(%q)?.textContent || ""`, sel)))
		return s
	}())
}

func TestConsole(t *testing.T) {
	w := newWorld(t)
	ok := fixturePrefix + "ok"
	w.Run("desktopflow", "push", world.FlowDir(t, "name: hello\ndescription: greets, then waits for the test's signal\ninputs:\n  - name: greeting\n    required: true\n  - name: signal\n    description: a file the flow waits for before it ends\n    required: true\noutputs:\n  - name: said\nrun: ./hello.sh\ntimeout: 2m\n",
		map[string]string{"hello.sh": "#!/bin/sh\necho \"tick 1: $DESKRUN_INPUT_GREETING\"\nwhile [ ! -e \"$DESKRUN_INPUT_SIGNAL\" ]; do sleep 0.05; done\necho 'tick 2: done'\nprintf '{\"said\": \"%s\"}' \"$DESKRUN_INPUT_GREETING\" > \"$DESKRUN_OUTPUT\"\n"}))
	_, err := w.TryStdin("maker-password\n", "user", "create", "mia", "--role", "maker", "--password-stdin")
	require.NoError(t, err)
	_, err = w.TryStdin("viewer-password\n", "user", "create", "vic", "--role", "viewer", "--password-stdin")
	require.NoError(t, err)

	ctx := w.browser(t)

	t.Run("sign in", func(t *testing.T) {
		w.signIn(t, ctx, "mia", "maker-password")
		require.Contains(t, text(t, ctx, "header .who"), "user:mia")
		require.Equal(t, "1", text(t, ctx, "#machines-online"))
		shot(t, ctx, "overview")
	})

	t.Run("a wrong password is explained and nothing is saved; then fixed", func(t *testing.T) {
		require.NoError(t, chromedp.Do(ctx,
			chromedp.Navigate(w.URL+"/connections"),
			chromedp.Click(chromedp.ID("new-connection")),
			chromedp.WaitVisible(chromedp.ID("c-name")),
			chromedp.SendKeys(chromedp.ID("c-name"), "robot"),
			chromedp.SendKeys(chromedp.ID("c-username"), ok),
			chromedp.SendKeys(chromedp.ID("c-password"), "not-the-password"),
			chromedp.Click(chromedp.ID("create-connection-submit")),
		))
		waitText(t, ctx, "#conn-result", "WrongPassword")
		res := text(t, ctx, "#conn-result")
		require.Contains(t, res, "nothing was saved")
		require.Contains(t, res, "0xC000006D") // STATUS_LOGON_FAILURE, in hex and in decimal
		require.Contains(t, res, "-1073741715")
		require.Contains(t, res, "Resolution")
		require.NotContains(t, text(t, ctx, "#conn-table"), "robot")
		require.NotContains(t, w.Run("connection", "list"), "robot", "a refused connection was saved")
		shot(t, ctx, "connection-wrong-password")

		// Fix it: the same form, the right password.
		_, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("c-password").value = ""`))
		require.NoError(t, err)
		require.NoError(t, chromedp.Do(ctx,
			chromedp.SendKeys(chromedp.ID("c-password"), fixturePW),
			chromedp.Click(chromedp.ID("create-connection-submit")),
		))
		waitText(t, ctx, "#conn-result", "succeeded")
		require.Contains(t, text(t, ctx, "#conn-result"), "Saved robot")
		waitText(t, ctx, "#conn-table", "healthy")
		require.Contains(t, w.Run("connection", "list"), "robot")
		shot(t, ctx, "connections")
	})

	t.Run("run a desktop flow and watch its logs stream", func(t *testing.T) {
		sigDir, err := os.MkdirTemp("", "drt-web-signal-")
		require.NoError(t, err)
		defer os.RemoveAll(sigDir)
		require.NoError(t, os.Chmod(sigDir, 0o755))
		signal := filepath.Join(sigDir, "go")
		require.NoError(t, chromedp.Do(ctx,
			chromedp.Navigate(w.URL+"/desktopflows/hello"),
			chromedp.WaitVisible(chromedp.ID("run-form")),
			chromedp.SendKeys(chromedp.ID("in-greeting"), "bonjour"),
			chromedp.SendKeys(chromedp.ID("in-signal"), signal),
			chromedp.Click(chromedp.ID("run-submit")),
			chromedp.WaitVisible(chromedp.ID("run-log")),
		))
		// The page is loaded once; a marker on window would vanish with a
		// reload, so the output that follows must come over the stream.
		_, err = chromedp.Run(ctx, chromedp.Evaluate[bool](`window.__notReloaded = true`))
		require.NoError(t, err)
		waitText(t, ctx, "#run-log", "tick 1: bonjour")
		require.NotContains(t, text(t, ctx, "#run-log"), "tick 2")
		waitText(t, ctx, "#run-state", "running")
		shot(t, ctx, "run-streaming")
		require.NoError(t, os.WriteFile(signal, nil, 0o644))
		waitText(t, ctx, "#run-log", "tick 2: done")
		waitText(t, ctx, "#run-state", "succeeded")
		waitText(t, ctx, "#outputs", "bonjour")
		waitText(t, ctx, "#log-status", "The run is over")
		still, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.__notReloaded === true`))
		require.NoError(t, err)
		require.True(t, still, "the page reloaded")
		shot(t, ctx, "run-succeeded")
	})

	t.Run("a failed desktop run shows its screenshot", func(t *testing.T) {
		w.Run("desktopflow", "push", world.FlowDir(t, "name: gui\ndesktop: true\nrun: ./gui.sh\n", map[string]string{"gui.sh": "#!/bin/sh\nxsetroot -solid '#336699'\nxmessage -geometry +50+50 'deskrun console test' &\nsleep 1\necho 'about to fail' >&2\nexit 3\n"}))
		require.NoError(t, chromedp.Do(ctx,
			chromedp.Navigate(w.URL+"/desktopflows/gui"),
			chromedp.WaitVisible(chromedp.ID("run-form")),
			chromedp.Click(chromedp.ID("run-submit")),
			chromedp.WaitVisible(chromedp.ID("run-log")),
		))
		waitText(t, ctx, "#run-state", "failed")
		waitText(t, ctx, "#run-summary", "DesktopFlowFailed")
		require.Equal(t, "3", text(t, ctx, "#exit-code"))
		width, err := chromedp.Run(ctx, chromedp.Poll[int](`(() => { const i = document.getElementById("screenshot"); return i && i.complete && i.naturalWidth })()`,
			chromedp.WithPollingTimeout(30*time.Second)))
		require.NoError(t, err)
		require.Equal(t, 1280, width)
		require.Contains(t, text(t, ctx, "#run-log"), "about to fail")
		shot(t, ctx, "run-failed-screenshot")

		// The runs list filters by state.
		require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(w.URL+"/runs?state=failed"), chromedp.WaitVisible(chromedp.CSS("table"))))
		list := text(t, ctx, "main table")
		require.Contains(t, list, "gui")
		require.NotContains(t, list, "hello")
	})

	t.Run("machine state updates live", func(t *testing.T) {
		require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(w.URL+"/machines"), chromedp.WaitVisible(chromedp.ID("machine-box"))))
		require.Contains(t, text(t, ctx, "#machine-box"), "online")
		_, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.__notReloaded = true`))
		require.NoError(t, err)
		require.NoError(t, w.Agent.Process.Kill())
		w.Agent.Wait()
		waitText(t, ctx, "#machine-box", "offline")
		shot(t, ctx, "machines-offline")
		w.Agent = w.Start("agent", "run", "--state-dir", w.AgentDir)
		waitText(t, ctx, "#machine-box", "online")
		still, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.__notReloaded === true`))
		require.NoError(t, err)
		require.True(t, still, "the page reloaded")
	})

	t.Run("a viewer cannot create a connection", func(t *testing.T) {
		vctx := w.browser(t)
		w.signIn(t, vctx, "vic", "viewer-password")
		require.NoError(t, chromedp.Do(vctx, chromedp.Navigate(w.URL+"/connections"), chromedp.WaitVisible(chromedp.ID("conn-table"))))
		absent, err := chromedp.Run(vctx, chromedp.Evaluate[bool](`document.getElementById("create-form") === null && document.getElementById("new-connection") === null && !document.body.textContent.includes("Re-test")`))
		require.NoError(t, err)
		require.True(t, absent, "a viewer sees the create form or a re-test button")
		require.Contains(t, text(t, vctx, "#conn-table"), "robot")
		shot(t, vctx, "connections-viewer")

		// The API refuses the same action to a viewer's token.
		tok := strings.TrimSpace(w.Run("token", "create", "--role", "viewer"))
		env := w.Env
		w.Env = append(append([]string{}, env...), "DESKRUN_TOKEN="+tok)
		out, err := w.TryStdin(fixturePW+"\n", "connection", "create", "sneaky", "--machine", "box", "--username", ok, "--password-stdin", "--server-seal")
		w.Env = env
		require.Error(t, err)
		require.Contains(t, out, "Forbidden")
		require.NotContains(t, w.Run("connection", "list"), "sneaky")
	})

	t.Run("phone width", func(t *testing.T) {
		require.NoError(t, chromedp.Do(ctx,
			chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile),
			chromedp.Navigate(w.URL+"/connections"),
			chromedp.WaitVisible(chromedp.ID("conn-table")),
		))
		overflow, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`))
		require.NoError(t, err)
		require.False(t, overflow, "the page is wider than a phone")
		shot(t, ctx, "connections-phone")
	})
}

// TestCloudFlowConsole applies a cloud flow with the CLI, finds its webhook
// URL on its page, runs it from the form with an input, and follows the
// flow run page to "succeeded": its desktop step ran a desktop flow as the
// test's PAM user, and links to that desktop run.
func TestCloudFlowConsole(t *testing.T) {
	w := newWorld(t)
	ok := fixturePrefix + "ok"
	w.Run("desktopflow", "push", world.FlowDir(t, "name: whoami\ninputs:\n  - name: who\n    required: true\noutputs:\n  - name: greeting\n  - name: user\nrun: ./whoami.sh\ntimeout: 1m\n",
		map[string]string{"whoami.sh": "#!/bin/sh\necho \"hello $DESKRUN_INPUT_WHO from $(id -un)\"\nprintf '{\"greeting\": \"hello %s\", \"user\": \"%s\"}' \"$DESKRUN_INPUT_WHO\" \"$(id -un)\" > \"$DESKRUN_OUTPUT\"\n"}))
	_, err := w.TryStdin(fixturePW+"\n", "connection", "create", "robot", "--machine", "box", "--username", ok, "--password-stdin")
	require.NoError(t, err)
	_, err = w.TryStdin("hook-secret-0123456789", "secret", "set", "greet_hook", "--value-stdin")
	require.NoError(t, err)
	def := filepath.Join(t.TempDir(), "greet.flow.yaml")
	require.NoError(t, os.WriteFile(def, []byte(`name: greet
description: Greets someone through the whoami desktop flow
inputs:
  - name: who
    type: string
    required: true
  - name: times
    type: number
    default: 1
triggers:
  webhook: {id: greet-hook, secret: greet_hook}
  schedule: {cron: "30 6 * * 1", timezone: Europe/Paris, inputs: {who: schedule}}
steps:
  - id: greet
    desktop:
      flow: whoami
      connection: robot
      inputs:
        who: "${{ inputs.who }}"
outputs:
  greeting: "${{ steps.greet.outputs.greeting }}"
  user: "${{ steps.greet.outputs.user }}"
`), 0o644))
	w.Run("flow", "apply", def)
	_, err = w.TryStdin("maker-password\n", "user", "create", "mia", "--role", "maker", "--password-stdin")
	require.NoError(t, err)

	ctx := w.browser(t)
	w.signIn(t, ctx, "mia", "maker-password")
	hook := w.URL + "/hooks/greet-hook"

	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(w.URL+"/"),
		chromedp.Click(chromedp.CSS(`nav a[href="/flows"]`)),
		chromedp.WaitVisible(chromedp.ID("cloudflow-greet")),
	))
	row := text(t, ctx, "#cloudflow-greet")
	require.Contains(t, row, hook)
	require.Contains(t, row, "30 6 * * 1")
	require.Contains(t, row, "Europe/Paris")
	require.Contains(t, row, "next tick")

	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`#cloudflow-greet a[href="/flows/greet"]`)),
		chromedp.WaitVisible(chromedp.ID("run-form")),
	))
	require.Equal(t, hook, text(t, ctx, "#webhook-url"))
	require.Contains(t, text(t, ctx, "#definition"), "connection: robot")
	typ, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("in-times").type`))
	require.NoError(t, err)
	require.Equal(t, "number", typ)
	shot(t, ctx, "cloud-flow")

	require.NoError(t, chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.ID("in-who"), "Ada"),
		chromedp.Click(chromedp.ID("run-submit")),
		chromedp.WaitVisible(chromedp.ID("flowrun-summary")),
	))
	waitText(t, ctx, "#flowrun-state", "succeeded")
	require.Contains(t, text(t, ctx, "#trigger"), "manual")
	require.Contains(t, text(t, ctx, "#inputs"), "Ada")
	step := text(t, ctx, "#step-greet-1")
	require.Contains(t, step, "desktop")
	require.Contains(t, step, "succeeded")
	require.Regexp(t, `\d+(\.\d+)?(ms|s)`, text(t, ctx, "#step-greet-1 .duration"))
	outputs := text(t, ctx, "#flow-outputs")
	require.Contains(t, outputs, "hello Ada")
	require.Contains(t, outputs, ok, "the desktop step ran as the connection's user")
	shot(t, ctx, "cloud-flow-run")

	// The desktop step links to its desktop run.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("#step-greet-1 a.desktop-run")),
		chromedp.WaitVisible(chromedp.ID("run-log")),
	))
	waitText(t, ctx, "#run-state", "succeeded")
	waitText(t, ctx, "#run-log", "hello Ada from "+ok)
}
