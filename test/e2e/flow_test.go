package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/notify"
	"github.com/deskrun/deskrun/internal/wire"
	"github.com/deskrun/deskrun/test/world"
)

// receiver is the local HTTP server a flow's http step posts to.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	bodies []string
}

func newReceiver(t *testing.T) *receiver {
	rc := &receiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.bodies = append(rc.bodies, string(b))
		rc.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok": true}`))
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) got() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]string(nil), rc.bodies...)
}

// hook posts a signed webhook to the server and returns the run it started.
func (w *e2eWorld) hook(id, secret string, body []byte) wire.FlowRun {
	w.T.Helper()
	req, err := http.NewRequest(http.MethodPost, "https://"+w.Addr+"/hooks/"+id, bytes.NewReader(body))
	require.NoError(w.T, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(notify.SignatureHeader, notify.Sign([]byte(secret), time.Now(), body))
	resp, err := w.HTTPClient().Do(req)
	require.NoError(w.T, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	require.Equal(w.T, http.StatusAccepted, resp.StatusCode, "%s", b)
	var r wire.FlowRun
	require.NoError(w.T, json.Unmarshal(b, &r))
	return r
}

func (w *e2eWorld) flowRun(id string) wire.FlowRun {
	var r wire.FlowRun
	require.NoError(w.T, json.Unmarshal([]byte(w.Run("run", "show", id, "--json")), &r))
	return r
}

func (w *e2eWorld) desktopRuns(flow string) []wire.Run {
	var l wire.RunList
	require.NoError(w.T, json.Unmarshal([]byte(w.Run("run", "list", "--flow", flow, "--json")), &l))
	return l.Runs
}

func flowFile(t *testing.T, body string) string {
	p := filepath.Join(t.TempDir(), "flow.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
	return p
}

// TestCloudFlows: a webhook starts a cloud flow whose desktop step runs as
// a real PAM user and whose http step posts the desktop outputs to a local
// server; the server is killed between steps; a retrying step never
// retries a definitive logon failure.
func TestCloudFlows(t *testing.T) {
	t.Parallel()
	w := connWorld(t)
	out, err := w.create("robot", fixturePrefix+"ok", fixturePW)
	require.NoError(t, err, out)
	greet := world.FlowDir(t, `name: greet
inputs:
  - name: who
    required: true
  - name: pause
    type: number
    default: 0
outputs:
  - name: greeting
  - name: uid
    type: number
run: ./greet.sh
`, map[string]string{"greet.sh": `#!/bin/sh
sleep "$DESKRUN_INPUT_PAUSE"
printf '{"greeting": "hello %s", "uid": %s}' "$DESKRUN_INPUT_WHO" "$(id -u)" > "$DESKRUN_OUTPUT"
`})
	w.Run("desktopflow", "push", greet)
	rc := newReceiver(t)
	_, err = w.TryStdin("hook-secret-0123456789", "secret", "set", "hook_key", "--value-stdin")
	require.NoError(t, err)
	w.Run("flow", "apply", flowFile(t, `name: order
triggers:
  webhook: {id: orders, secret: hook_key}
steps:
  - id: desk
    desktop:
      flow: greet
      connection: robot
      inputs:
        who: "${{ trigger.body.customer }}"
        pause: "${{ trigger.body.pause }}"
  - id: post
    http:
      method: POST
      url: "`+rc.URL+`/result"
      json: '{"greeting": steps.desk.outputs.greeting, "uid": steps.desk.outputs.uid}'
outputs:
  greeting: "${{ steps.desk.outputs.greeting }}"
`))

	t.Run("webhook to desktop to http", func(t *testing.T) {
		r := w.hook("orders", "hook-secret-0123456789", []byte(`{"customer": "Ada", "pause": 0}`))
		w.Eventually("flow run done", func() bool { return deskrun.FlowRunState(w.flowRun(r.ID).State).Terminal() })
		done := w.flowRun(r.ID)
		require.Equal(t, "succeeded", done.State, "%+v", done.Error)
		require.JSONEq(t, `{"greeting": "hello Ada"}`, string(done.Outputs))
		bodies := rc.got()
		require.Len(t, bodies, 1)
		var got map[string]any
		require.NoError(t, json.Unmarshal([]byte(bodies[0]), &got))
		require.Equal(t, "hello Ada", got["greeting"])
		require.NotZero(t, got["uid"])
		require.Len(t, done.Steps, 2)
	})

	t.Run("server killed between steps", func(t *testing.T) {
		before := len(rc.got())
		nDesk := len(w.desktopRuns("greet"))
		r := w.hook("orders", "hook-secret-0123456789", []byte(`{"customer": "Bob", "pause": 2}`))
		w.Eventually("desktop step running", func() bool {
			runs := w.desktopRuns("greet")
			if len(runs) > nDesk && deskrun.RunState(runs[0].State).Terminal() {
				t.Fatalf("the desktop step ended before the server could be killed: %+v; flow run %+v", runs[0], w.flowRun(r.ID))
			}
			return len(runs) > nDesk && runs[0].State == "running"
		})
		w.Kill(w.Server)
		w.StartServer()
		w.Eventually("flow run done", func() bool { return deskrun.FlowRunState(w.flowRun(r.ID).State).Terminal() })
		done := w.flowRun(r.ID)
		require.Equal(t, "succeeded", done.State, "%+v", done.Error)
		require.Len(t, rc.got(), before+1, "the http step ran twice or not at all")
		require.Len(t, w.desktopRuns("greet"), nDesk+1, "the desktop step ran twice")
	})

	t.Run("retries never retry a definitive logon failure", func(t *testing.T) {
		u := newUser(t, "flowrot", "Flow-pass-1")
		out, err := w.create("rot", u, "Flow-pass-1")
		require.NoError(t, err, out)
		setPassword(t, u, "Flow-pass-2")
		w.Run("flow", "apply", flowFile(t, `name: stubborn
steps:
  - id: desk
    retry: {max: 5, backoff: 1s}
    desktop:
      flow: greet
      connection: rot
      inputs: {who: x}
`))
		out, _ = w.Try("flow", "run", "stubborn", "--wait", "60s", "--json")
		var r wire.FlowRun
		require.NoError(t, json.NewDecoder(strings.NewReader(out[strings.Index(out, "{"):])).Decode(&r), out)
		w.Eventually("flow run done", func() bool { return deskrun.FlowRunState(w.flowRun(r.ID).State).Terminal() })
		done := w.flowRun(r.ID)
		require.Equal(t, "failed", done.State)
		require.Len(t, done.Steps, 1, "a definitive failure was retried")
		require.Equal(t, 1, failures(t, u), "more than one logon attempt reached PAM")
		require.Equal(t, "broken", w.connection("rot").State)
	})

	t.Run("bad webhooks are refused", func(t *testing.T) {
		post := func(body []byte, sig string) int {
			req, _ := http.NewRequest(http.MethodPost, "https://"+w.Addr+"/hooks/orders", bytes.NewReader(body))
			if sig != "" {
				req.Header.Set(notify.SignatureHeader, sig)
			}
			resp, err := w.HTTPClient().Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			return resp.StatusCode
		}
		body := []byte(`{"customer": "Eve"}`)
		require.Equal(t, http.StatusUnauthorized, post(body, ""))
		require.Equal(t, http.StatusUnauthorized, post(body, notify.Sign([]byte("wrong-secret"), time.Now(), body)))
		require.Equal(t, http.StatusUnauthorized, post(body, notify.Sign([]byte("hook-secret-0123456789"), time.Now().Add(-time.Hour), body)))
		big := bytes.Repeat([]byte("x"), 2<<20)
		require.Equal(t, http.StatusRequestEntityTooLarge, post(big, notify.Sign([]byte("hook-secret-0123456789"), time.Now(), big)))
	})
}
