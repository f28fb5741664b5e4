package server_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/agent"
	"github.com/deskrun/deskrun/internal/api"
	"github.com/deskrun/deskrun/internal/client"
	"github.com/deskrun/deskrun/internal/pki"
	"github.com/deskrun/deskrun/internal/server"
	"github.com/deskrun/deskrun/internal/wire"
)

// clock is a settable clock for token expiry.
type clock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

type env struct {
	srv   *server.Server
	clock *clock
	admin *client.Client
	url   string
	hc    *http.Client
	token string
}

func startServer(t *testing.T) *env {
	t.Helper()
	ck := &clock{}
	cfg := server.DefaultConfig()
	cfg.Data = t.TempDir()
	cfg.Listen = "127.0.0.1:0"
	cfg.HeartbeatInterval = 50 * time.Millisecond
	cfg.AgentLease = 300 * time.Millisecond
	cfg.MaxBodyBytes = 64 << 10
	s := &server.Server{Config: cfg, Log: slog.New(slog.DiscardHandler), Version: "test", Now: ck.now}
	require.NoError(t, s.Start(t.Context()))
	t.Cleanup(s.Stop)
	require.Equal(t, "https://"+s.Addr, s.Config.URL, "with port 0 the URL names the chosen port")
	tok, err := os.ReadFile(filepath.Join(cfg.Data, server.BootstrapTokenFile))
	require.NoError(t, err)
	token := strings.TrimSpace(string(tok))
	cl, err := client.New(s.Config.URL, token, s.TLS.CAPEM)
	require.NoError(t, err)
	tlsCfg, err := pki.PoolConfig(s.TLS.CAPEM, "127.0.0.1")
	require.NoError(t, err)
	return &env{srv: s, clock: ck, admin: cl, url: s.Config.URL, token: token,
		hc: &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}}
}

func (e *env) enrollmentToken(t *testing.T, uses int, ttl string) string {
	t.Helper()
	tok, err := e.admin.CreateToken(t.Context(), wire.TokenCreate{Kind: "enrollment", Uses: uses, TTL: ttl})
	require.NoError(t, err)
	return tok.Secret
}

func (e *env) startAgent(t *testing.T, name string) (stateDir string, stop func()) {
	t.Helper()
	dir := t.TempDir()
	_, err := agent.Enroll(t.Context(), agent.EnrollOptions{Token: e.enrollmentToken(t, 1, ""), Name: name, StateDir: dir, Info: agent.HostInfo(agent.DefaultHostFiles, 1)})
	require.NoError(t, err)
	return dir, e.runAgent(t, dir)
}

func (e *env) runAgent(t *testing.T, dir string) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	ag := &agent.Agent{StateDir: dir, Log: slog.New(slog.DiscardHandler), Info: agent.HostInfo(agent.DefaultHostFiles, 1), MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		Doctor: func(context.Context) deskrun.DoctorReport {
			return deskrun.DoctorReport{At: time.Now(), Checks: []deskrun.DoctorCheck{
				{Name: "root", Status: deskrun.DoctorPass, Detail: "running as root, as the agent does"},
				{Name: "pam service batch", Status: deskrun.DoctorFail, Detail: "/etc/pam.d/deskrun-batch missing", Fix: "deskrun agent install-pam"},
			}}
		}}
	go func() { defer close(done); _ = ag.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *env) machineState(t *testing.T, name string) *wire.Machine {
	m, err := e.admin.Machine(t.Context(), name)
	require.NoError(t, err)
	return m
}

func TestJobRoundTripAndQueueWhileOffline(t *testing.T) {
	t.Parallel()
	e := startServer(t)
	dir, stop := e.startAgent(t, "rt")
	waitFor(t, "machine online", func() bool { return e.machineState(t, "rt").State == "online" })

	j, err := e.admin.CreateJob(t.Context(), wire.JobCreate{Machine: "rt", Kind: "noop"})
	require.NoError(t, err)
	j, err = e.admin.Job(t.Context(), j.ID, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "succeeded", j.State)
	require.JSONEq(t, `{"ok":true}`, string(j.Result))

	// A job created while the agent is away waits, and is pushed when it
	// comes back.
	stop()
	waitFor(t, "machine offline", func() bool { return e.machineState(t, "rt").State == "offline" })
	j, err = e.admin.CreateJob(t.Context(), wire.JobCreate{Machine: "rt", Kind: "noop"})
	require.NoError(t, err)
	require.Equal(t, "queued", j.State)
	e.runAgent(t, dir)
	j, err = e.admin.Job(t.Context(), j.ID, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "succeeded", j.State)
}

func TestAgentLostFailsRunningJobAfterLease(t *testing.T) {
	t.Parallel()
	e := startServer(t)
	dir, stop := e.startAgent(t, "lost")
	waitFor(t, "machine online", func() bool { return e.machineState(t, "lost").State == "online" })
	j, err := e.admin.CreateJob(t.Context(), wire.JobCreate{Machine: "lost", Kind: "sleep", Payload: json.RawMessage(`{"ms": 60000}`)})
	require.NoError(t, err)
	waitFor(t, "job running", func() bool {
		j, err := e.admin.Job(t.Context(), j.ID, 0)
		return err == nil && j.State == "running"
	})
	stop() // the agent goes away and does not come back
	_ = dir
	j, err = e.admin.Job(t.Context(), j.ID, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "failed", j.State)
	require.Equal(t, deskrun.CodeAgentLost, j.Error.Code)
	m := e.machineState(t, "lost")
	require.Equal(t, "offline", m.State)
	require.NotEmpty(t, m.OfflineReason)
}

func TestEnrollmentRefusals(t *testing.T) {
	t.Parallel()
	e := startServer(t)
	ctx := t.Context()
	info := agent.HostInfo(agent.DefaultHostFiles, 1)
	enroll := func(tok, name string) error {
		_, err := agent.Enroll(ctx, agent.EnrollOptions{Token: tok, Name: name, StateDir: t.TempDir(), Info: info})
		return err
	}
	requireCode := func(err error, code string) {
		t.Helper()
		require.Error(t, err)
		require.Equal(t, code, deskrun.ErrorCode(err), "%v", err)
	}

	t.Run("malformed", func(t *testing.T) {
		for _, tok := range []string{"", "hello", "dre1_!!!", "dre1_e30"} {
			requireCode(enroll(tok, "m"), deskrun.CodeEnrollmentTokenInvalid)
		}
	})
	t.Run("forged secret", func(t *testing.T) {
		good, err := wire.ParseEnrollmentToken(e.enrollmentToken(t, 1, ""))
		require.NoError(t, err)
		good.Secret = "forged-" + good.Secret
		requireCode(enroll(good.Encode(), "forged"), deskrun.CodeEnrollmentTokenInvalid)
	})
	t.Run("reused", func(t *testing.T) {
		tok := e.enrollmentToken(t, 1, "")
		require.NoError(t, enroll(tok, "first"))
		requireCode(enroll(tok, "second"), deskrun.CodeEnrollmentTokenUsedUp)
	})
	t.Run("expired", func(t *testing.T) {
		tok := e.enrollmentToken(t, 1, "1h")
		e.clock.advance(2 * time.Hour)
		requireCode(enroll(tok, "late"), deskrun.CodeEnrollmentTokenExpired)
	})
	t.Run("another machine's name with its own key", func(t *testing.T) {
		require.NoError(t, enroll(e.enrollmentToken(t, 1, ""), "taken"))
		tok := e.enrollmentToken(t, 1, "")
		requireCode(enroll(tok, "taken"), deskrun.CodeMachineNameTaken)
		// The refused attempt did not use the token up.
		require.NoError(t, enroll(tok, "not-taken"))
	})
	t.Run("server not signed by the pinned CA", func(t *testing.T) {
		good, err := wire.ParseEnrollmentToken(e.enrollmentToken(t, 1, ""))
		require.NoError(t, err)
		good.CAFingerprint = strings.Repeat("ab", 32)
		requireCode(enroll(good.Encode(), "mitm"), deskrun.CodeServerCertificateUntrusted)
		_, err = e.admin.Machine(ctx, "mitm")
		require.Equal(t, deskrun.CodeNotFound, deskrun.ErrorCode(err))
	})
}

// dialAgent opens the agent WebSocket by hand to play a misbehaving agent.
func (e *env) dialAgent(t *testing.T) *websocket.Conn {
	t.Helper()
	ws, _, err := websocket.Dial(t.Context(), strings.Replace(e.url, "https", "wss", 1)+"/api/v1/agent/connect", &websocket.DialOptions{HTTPClient: e.hc})
	require.NoError(t, err)
	t.Cleanup(func() { ws.CloseNow() })
	return ws
}

func readFrame(t *testing.T, ws *websocket.Conn) *wire.Frame {
	t.Helper()
	_, b, err := ws.Read(t.Context())
	require.NoError(t, err)
	var f wire.Frame
	require.NoError(t, json.Unmarshal(b, &f))
	return &f
}

func writeFrame(t *testing.T, ws *websocket.Conn, f *wire.Frame) {
	t.Helper()
	b, _ := json.Marshal(f)
	require.NoError(t, ws.Write(t.Context(), websocket.MessageText, b))
}

func TestAgentHandshakeRefusals(t *testing.T) {
	t.Parallel()
	e := startServer(t)
	dir := t.TempDir()
	_, err := agent.Enroll(t.Context(), agent.EnrollOptions{Token: e.enrollmentToken(t, 1, ""), Name: "hs", StateDir: dir, Info: agent.HostInfo(agent.DefaultHostFiles, 1)})
	require.NoError(t, err)
	id, err := agent.LoadIdentity(dir)
	require.NoError(t, err)

	// A good handshake, whose signature is then replayed.
	ws := e.dialAgent(t)
	ch := readFrame(t, ws)
	require.Equal(t, wire.FrameChallenge, ch.Type)
	sig := ed25519.Sign(id.SigningKey, wire.AuthMessage(id.MachineID, ch.Challenge.Nonce))
	writeFrame(t, ws, &wire.Frame{Type: wire.FrameHello, Hello: &wire.Hello{MachineID: id.MachineID, Signature: sig, ProtocolVersion: wire.ProtocolVersion}})
	require.Equal(t, wire.FrameWelcome, readFrame(t, ws).Type)
	ws.Close(websocket.StatusNormalClosure, "")

	t.Run("replayed signature", func(t *testing.T) {
		ws := e.dialAgent(t)
		readFrame(t, ws) // a new challenge, a new nonce
		writeFrame(t, ws, &wire.Frame{Type: wire.FrameHello, Hello: &wire.Hello{MachineID: id.MachineID, Signature: sig, ProtocolVersion: wire.ProtocolVersion}})
		f := readFrame(t, ws)
		require.Equal(t, wire.FrameError, f.Type)
		require.Equal(t, deskrun.CodeAgentAuthFailed, f.Error.Code)
	})
	t.Run("another machine's key", func(t *testing.T) {
		_, other, _ := ed25519.GenerateKey(nil)
		ws := e.dialAgent(t)
		c := readFrame(t, ws)
		writeFrame(t, ws, &wire.Frame{Type: wire.FrameHello, Hello: &wire.Hello{MachineID: id.MachineID,
			Signature: ed25519.Sign(other, wire.AuthMessage(id.MachineID, c.Challenge.Nonce)), ProtocolVersion: wire.ProtocolVersion}})
		require.Equal(t, deskrun.CodeAgentAuthFailed, readFrame(t, ws).Error.Code)
	})
	t.Run("protocol too old", func(t *testing.T) {
		ws := e.dialAgent(t)
		c := readFrame(t, ws)
		writeFrame(t, ws, &wire.Frame{Type: wire.FrameHello, Hello: &wire.Hello{MachineID: id.MachineID,
			Signature: ed25519.Sign(id.SigningKey, wire.AuthMessage(id.MachineID, c.Challenge.Nonce)), ProtocolVersion: wire.MinProtocolVersion - 1}})
		f := readFrame(t, ws)
		require.Equal(t, deskrun.CodeAgentProtocolTooOld, f.Error.Code)
		require.Contains(t, f.Error.Resolution, "Upgrade deskrun")
	})
	t.Run("malformed hello", func(t *testing.T) {
		ws := e.dialAgent(t)
		readFrame(t, ws)
		require.NoError(t, ws.Write(t.Context(), websocket.MessageText, []byte("{not json")))
		_, _, err := ws.Read(t.Context())
		require.Error(t, err) // closed, nothing recorded
	})
	// The good connection was closed by the agent; the server notices on
	// its read loop.
	waitFor(t, "machine offline", func() bool { return e.machineState(t, "hs").State == "offline" })
}

// call sends a raw request and returns status, body.
func (e *env) call(t *testing.T, method, path, token string, body io.Reader) (*http.Request, *http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, e.url+path, body)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return req, resp, b
}

func TestAPIBadInput(t *testing.T) {
	t.Parallel()
	e := startServer(t)
	viewer, err := e.admin.CreateToken(t.Context(), wire.TokenCreate{Kind: "api", Role: "viewer"})
	require.NoError(t, err)
	before, err := e.admin.Tokens(t.Context(), "")
	require.NoError(t, err)

	cases := []struct {
		name, method, path, token, body string
		status                          int
		code                            string
	}{
		{"malformed JSON", "POST", "/api/v1/tokens", e.token, `{"kind": `, 400, deskrun.CodeMalformedJSON},
		{"not JSON", "POST", "/api/v1/tokens", e.token, `kind=api`, 400, deskrun.CodeMalformedJSON},
		{"empty body", "POST", "/api/v1/tokens", e.token, ``, 400, deskrun.CodeMalformedJSON},
		{"two values", "POST", "/api/v1/tokens", e.token, `{"kind":"api"}{}`, 400, deskrun.CodeMalformedJSON},
		{"unknown field", "POST", "/api/v1/tokens", e.token, `{"kind":"api","admin":true}`, 400, deskrun.CodeInvalid},
		{"wrong type", "POST", "/api/v1/tokens", e.token, `{"kind":"api","uses":"many"}`, 400, deskrun.CodeInvalid},
		{"bad role", "POST", "/api/v1/tokens", e.token, `{"kind":"api","role":"root"}`, 400, deskrun.CodeInvalid},
		{"body over the limit", "POST", "/api/v1/tokens", e.token, `{"name":"` + strings.Repeat("x", 128<<10) + `"}`, 413, deskrun.CodeBodyTooLarge},
		{"no token", "GET", "/api/v1/machines", "", ``, 401, deskrun.CodeUnauthorized},
		{"forged token", "GET", "/api/v1/machines", e.token + "x", ``, 401, deskrun.CodeUnauthorized},
		{"viewer creates a token", "POST", "/api/v1/tokens", viewer.Secret, `{"kind":"api"}`, 403, deskrun.CodeForbidden},
		{"unknown route", "GET", "/api/v1/nothing-here", e.token, ``, 404, deskrun.CodeRouteNotFound},
		{"unknown method", "PUT", "/api/v1/machines", e.token, ``, 405, deskrun.CodeMethodNotAllowed},
		{"unknown machine", "GET", "/api/v1/machines/nope", e.token, ``, 404, deskrun.CodeNotFound},
		{"job for unknown machine", "POST", "/api/v1/jobs", e.token, `{"machine":"nope","kind":"noop"}`, 404, deskrun.CodeNotFound},
		{"bad wait", "GET", "/api/v1/jobs/j_x?wait=forever", e.token, ``, 400, deskrun.CodeInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, resp, b := e.call(t, c.method, c.path, c.token, strings.NewReader(c.body))
			require.Equal(t, c.status, resp.StatusCode, "%s", b)
			var env wire.ErrorEnvelope
			require.NoError(t, json.Unmarshal(b, &env), "%s", b)
			require.Equal(t, c.code, env.Error.Code, "%s", b)
			require.NotEmpty(t, env.Error.Message)
			require.Equal(t, resp.Header.Get("X-Request-Id"), env.Error.RequestID)
		})
	}
	after, err := e.admin.Tokens(t.Context(), "")
	require.NoError(t, err)
	require.Len(t, after, len(before), "a refused request wrote a token")
}

func TestPlainHTTPIsRedirected(t *testing.T) {
	t.Parallel()
	e := startServer(t)
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get("http://" + e.srv.Addr + "/api/v1/machines?x=1")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusPermanentRedirect, resp.StatusCode)
	require.Equal(t, e.url+"/api/v1/machines?x=1", resp.Header.Get("Location"))
	// And HTTPS still works afterwards.
	_, r2, _ := e.call(t, "GET", "/healthz", "", nil)
	require.Equal(t, 200, r2.StatusCode)
}

func TestOpenAPIMatchesResponses(t *testing.T) {
	t.Parallel()
	e := startServer(t)
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(api.OpenAPI())
	require.NoError(t, err)
	require.NoError(t, doc.Validate(loader.Context))
	doc.Servers = openapi3.Servers{{URL: e.url}}
	router, err := legacy.NewRouter(doc)
	require.NoError(t, err)

	_, stop := e.startAgent(t, "oa")
	defer stop()
	waitFor(t, "machine online", func() bool { return e.machineState(t, "oa").State == "online" })
	waitFor(t, "doctor report", func() bool { return e.machineState(t, "oa").Doctor != nil })
	job, err := e.admin.CreateJob(t.Context(), wire.JobCreate{Machine: "oa", Kind: "noop"})
	require.NoError(t, err)
	tok, err := e.admin.CreateToken(t.Context(), wire.TokenCreate{Kind: "api", Role: "viewer", Name: "to revoke"})
	require.NoError(t, err)

	hello := examplePackage(t)

	reqs := []struct{ method, path, body string }{
		{"GET", "/healthz", ""},
		{"GET", "/readyz", ""},
		{"GET", "/api/v1/machines", ""},
		{"GET", "/api/v1/machines/oa", ""},
		{"GET", "/api/v1/machines/missing", ""},
		{"PATCH", "/api/v1/machines/oa", `{"unattended_sessions":"exclusive"}`},
		{"PATCH", "/api/v1/machines/oa", `{"unattended_sessions":"sometimes"}`},
		{"POST", "/api/v1/tokens", `{"kind":"api","role":"maker","name":"m"}`},
		{"POST", "/api/v1/tokens", `{"kind":"enrollment","uses":2,"ttl":"10m"}`},
		{"POST", "/api/v1/tokens", `{"kind":"nope"}`},
		{"GET", "/api/v1/tokens", ""},
		{"GET", "/api/v1/tokens?kind=enrollment", ""},
		{"DELETE", "/api/v1/tokens/" + tok.ID, ""},
		{"POST", "/api/v1/users", `{"name":"oa-user","role":"viewer","password":"oa-password"}`},
		{"POST", "/api/v1/jobs", `{"machine":"oa","kind":"noop"}`},
		{"POST", "/api/v1/jobs", `{"machine":"oa","kind":"teleport"}`},
		{"GET", "/api/v1/jobs/" + job.ID + "?wait=5s", ""},
		{"GET", "/api/v1/jobs?machine=oa&limit=10", ""},
		{"POST", "/api/v1/jobs/" + job.ID + "/cancel", ""},
		{"POST", "/api/v1/desktopflows", hello},
		{"POST", "/api/v1/desktopflows", hello},
		{"POST", "/api/v1/desktopflows", "not a package"},
		{"GET", "/api/v1/desktopflows", ""},
		{"GET", "/api/v1/desktopflows/hello", ""},
		{"GET", "/api/v1/desktopflows/hello/versions/1", ""},
		{"GET", "/api/v1/desktopflows/hello/versions/9", ""},
		{"POST", "/api/v1/desktopflows/hello/runs", `{"connection":"nobody"}`},
		{"POST", "/api/v1/desktopflows/hello/runs", `{"connection":"x","inputs":{"undeclared":"1"}}`},
		{"GET", "/api/v1/runs", ""},
		{"GET", "/api/v1/runs?state=queued&limit=5", ""},
		{"GET", "/api/v1/runs/r_missing", ""},
		{"GET", "/api/v1/runs/r_missing/logs", ""},
		{"POST", "/api/v1/runs/r_missing/cancel", ""},
		{"DELETE", "/api/v1/desktopflows/hello", ""},
		{"GET", "/api/v1/desktopflows/hello", ""},
		{"GET", "/api/v1/openapi.json", ""},
		{"GET", "/api/v1/schemas/flow.json", ""},
		{"PUT", "/api/v1/secrets/hook_key", `{"value":"hk"}`},
		{"PUT", "/api/v1/secrets/bad-name", `{"value":"x"}`},
		{"GET", "/api/v1/secrets", ""},
		{"POST", "/api/v1/flows", `{"file":"f.yaml","definition":"name: oaflow\ninputs: [{name: n, type: number}]\ntriggers: {webhook: {secret: hook_key}}\nsteps:\n  - id: a\n    if: inputs.n > 100.0\n    http: {url: 'http://127.0.0.1:1'}\n"}`},
		{"POST", "/api/v1/flows", `{"file":"f.yaml","definition":"name: oaflow\ninputs: [{name: n, type: number}]\ntriggers: {webhook: {secret: hook_key}}\nsteps:\n  - id: a\n    if: inputs.n > 100.0\n    http: {url: 'http://127.0.0.1:1'}\n"}`},
		{"POST", "/api/v1/flows", `{"definition":"name: bad\nsteps:\n  - id: a\n    shell: {}\n"}`},
		{"GET", "/api/v1/flows", ""},
		{"GET", "/api/v1/flows/oaflow", ""},
		{"GET", "/api/v1/flows/missing", ""},
		{"POST", "/api/v1/flows/oaflow/runs?wait=10s", `{"inputs":{"n":1}}`},
		{"POST", "/api/v1/flows/oaflow/runs", `{"inputs":{"n":"many"}}`},
		{"GET", "/api/v1/flowruns?flow=oaflow", ""},
		{"GET", "/api/v1/flowruns/f_missing", ""},
		{"POST", "/hooks/oaflow", `{"n":1}`},
		{"POST", "/hooks/missing", `{}`},
		{"DELETE", "/api/v1/flows/oaflow", ""},
		{"DELETE", "/api/v1/secrets/hook_key", ""},
	}
	for _, rq := range reqs {
		var body io.Reader
		if rq.body != "" {
			body = strings.NewReader(rq.body)
		}
		req, resp, b := e.call(t, rq.method, rq.path, e.token, body)
		req.Body = io.NopCloser(strings.NewReader(rq.body))
		route, params, err := router.FindRoute(req)
		require.NoError(t, err, "%s %s has no route in the OpenAPI document", rq.method, rq.path)
		in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true}}
		err = openapi3filter.ValidateResponse(t.Context(), &openapi3filter.ResponseValidationInput{
			RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header, Body: io.NopCloser(bytes.NewReader(b)),
			Options: &openapi3filter.Options{IncludeResponseStatus: true}})
		require.NoError(t, err, "%s %s → %d %s", rq.method, rq.path, resp.StatusCode, b)
	}
	var _ routers.Router = router
}

func TestNewConnectionReplacesOld(t *testing.T) {
	t.Parallel()
	e := startServer(t)
	dir := t.TempDir()
	_, err := agent.Enroll(t.Context(), agent.EnrollOptions{Token: e.enrollmentToken(t, 1, ""), Name: "twice", StateDir: dir, Info: agent.HostInfo(agent.DefaultHostFiles, 1)})
	require.NoError(t, err)
	id, err := agent.LoadIdentity(dir)
	require.NoError(t, err)
	handshake := func() *websocket.Conn {
		ws := e.dialAgent(t)
		c := readFrame(t, ws)
		writeFrame(t, ws, &wire.Frame{Type: wire.FrameHello, Hello: &wire.Hello{MachineID: id.MachineID,
			Signature: ed25519.Sign(id.SigningKey, wire.AuthMessage(id.MachineID, c.Challenge.Nonce)), ProtocolVersion: wire.ProtocolVersion}})
		require.Equal(t, wire.FrameWelcome, readFrame(t, ws).Type)
		return ws
	}
	first := handshake()
	second := handshake()
	// The first connection is closed by the server; the second one lives.
	_, _, err = first.Read(t.Context())
	require.Error(t, err)
	require.Equal(t, "online", e.machineState(t, "twice").State)
	// A job goes to the live connection.
	j, err := e.admin.CreateJob(t.Context(), wire.JobCreate{Machine: "twice", Kind: "noop"})
	require.NoError(t, err)
	f := readFrame(t, second)
	require.Equal(t, wire.FrameJob, f.Type)
	require.Equal(t, j.ID, f.Job.ID)
}

func TestMetricsAndHealth(t *testing.T) {
	t.Parallel()
	e := startServer(t)
	_, stop := e.startAgent(t, "metrics")
	defer stop()
	waitFor(t, "machine online", func() bool { return e.machineState(t, "metrics").State == "online" })
	_, resp, b := e.call(t, "GET", "/metrics", "", nil)
	require.Equal(t, 200, resp.StatusCode)
	require.Contains(t, string(b), "deskrun_agents_connected 1")
	require.Contains(t, string(b), `deskrun_api_requests_total{route="GET /api/v1/machines/{machine}"`)
	_, resp, b = e.call(t, "GET", "/readyz", "", nil)
	require.Equal(t, 200, resp.StatusCode, "%s", b)
}
