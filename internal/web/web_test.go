package web_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/control"
	"github.com/deskrun/deskrun/internal/pki"
	"github.com/deskrun/deskrun/internal/server"
	"github.com/deskrun/deskrun/internal/web"
	"github.com/deskrun/deskrun/internal/wire"
)

type env struct {
	srv   *server.Server
	url   string
	tls   *http.Transport
	token string
}

func start(t *testing.T) *env {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.Data = t.TempDir()
	cfg.Listen = "127.0.0.1:0"
	s := &server.Server{Config: cfg, Log: slog.New(slog.DiscardHandler), Version: "test"}
	require.NoError(t, s.Start(t.Context()))
	t.Cleanup(s.Stop)
	tok, err := os.ReadFile(filepath.Join(cfg.Data, server.BootstrapTokenFile))
	require.NoError(t, err)
	tlsCfg, err := pki.PoolConfig(s.TLS.CAPEM, "127.0.0.1")
	require.NoError(t, err)
	return &env{srv: s, url: s.Config.URL, tls: &http.Transport{TLSClientConfig: tlsCfg}, token: strings.TrimSpace(string(tok))}
}

// browser is a client with a cookie jar that does not follow redirects.
func (e *env) browser(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	return &http.Client{Transport: e.tls, Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func get(t *testing.T, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	res, err := c.Get(u)
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res, string(b)
}

func post(t *testing.T, c *http.Client, u string, form url.Values, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := c.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res, string(b)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	require.NotNil(t, m, "no CSRF token on the page")
	return m[1]
}

func (e *env) signIn(t *testing.T, c *http.Client, user, password string) string {
	t.Helper()
	res, _ := post(t, c, e.url+"/signin", url.Values{"user": {user}, "password": {password}, "next": {"/connections"}})
	require.Equal(t, http.StatusSeeOther, res.StatusCode)
	require.Equal(t, "/connections", res.Header.Get("Location"))
	_, body := get(t, c, e.url+"/connections")
	return csrfOf(t, body)
}

func TestConsole(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := t.Context()
	_, err := e.srv.Control.CreateUser(ctx, "ada", deskrun.RoleAdmin, []byte("ada-password"))
	require.NoError(t, err)
	_, err = e.srv.Control.CreateUser(ctx, "vic", deskrun.RoleViewer, []byte("vic-password"))
	require.NoError(t, err)

	t.Run("anonymous visitors are sent to sign in", func(t *testing.T) {
		res, _ := get(t, e.browser(t), e.url+"/runs?state=failed")
		require.Equal(t, http.StatusSeeOther, res.StatusCode)
		require.Equal(t, "/signin?next="+url.QueryEscape("/runs?state=failed"), res.Header.Get("Location"))
		res, body := get(t, e.browser(t), e.url+"/signin")
		require.Equal(t, http.StatusOK, res.StatusCode)
		require.Contains(t, body, `<label for="password">`)
		require.Contains(t, res.Header.Get("Content-Security-Policy"), "script-src 'self'")
	})

	t.Run("the API keeps its own error envelope", func(t *testing.T) {
		res, body := get(t, e.browser(t), e.url+"/api/v1/nothing-here")
		require.Equal(t, http.StatusNotFound, res.StatusCode)
		require.Contains(t, body, deskrun.CodeRouteNotFound)
	})

	t.Run("a wrong password is refused", func(t *testing.T) {
		c := e.browser(t)
		res, body := post(t, c, e.url+"/signin", url.Values{"user": {"ada"}, "password": {"nope-nope"}})
		require.Equal(t, http.StatusUnauthorized, res.StatusCode)
		require.Contains(t, body, "not valid")
		res, _ = post(t, c, e.url+"/signin", url.Values{"user": {"nobody"}, "password": {"ada-password"}})
		require.Equal(t, http.StatusUnauthorized, res.StatusCode)
	})

	t.Run("session cookie", func(t *testing.T) {
		res, _ := post(t, e.browser(t), e.url+"/signin", url.Values{"user": {"ada"}, "password": {"ada-password"}})
		require.Equal(t, http.StatusSeeOther, res.StatusCode)
		var ck *http.Cookie
		for _, c := range res.Cookies() {
			if c.Name == web.CookieName {
				ck = c
			}
		}
		require.NotNil(t, ck)
		require.True(t, ck.HttpOnly)
		require.True(t, ck.Secure)
		require.Equal(t, http.SameSiteStrictMode, ck.SameSite)
		require.Equal(t, "/", ck.Path)
		require.Empty(t, ck.Domain)
	})

	t.Run("an admin sees every page", func(t *testing.T) {
		c := e.browser(t)
		e.signIn(t, c, "ada", "ada-password")
		for _, p := range []string{"/", "/machines", "/connections", "/desktopflows", "/runs", "/runs?state=failed", "/flows", "/catalog", "/audit"} {
			res, body := get(t, c, e.url+p)
			require.Equal(t, http.StatusOK, res.StatusCode, "%s: %s", p, body)
			require.Contains(t, body, "user:ada", p)
		}
		_, body := get(t, c, e.url+"/connections")
		require.Contains(t, body, `id="create-form"`)
		_, body = get(t, c, e.url+"/audit")
		require.Contains(t, body, deskrun.AuditSignIn)
	})

	t.Run("the machine page shows the doctor report", func(t *testing.T) {
		old := &deskrun.Machine{ID: "m_web_old", Name: "web-old", OS: "linux", Arch: "amd64", ProtocolVersion: 3,
			State: deskrun.MachineOffline, CreatedAt: time.Now()}
		m := &deskrun.Machine{ID: "m_web_doc", Name: "web-doc", OS: "linux", Arch: "amd64", ProtocolVersion: wire.ProtocolVersion,
			State: deskrun.MachineOnline, CreatedAt: time.Now()}
		for _, x := range []*deskrun.Machine{old, m} {
			require.NoError(t, e.srv.Store.CreateMachine(ctx, x))
		}
		c := e.browser(t)
		e.signIn(t, c, "vic", "vic-password")

		_, body := get(t, c, e.url+"/machines/web-doc")
		require.Contains(t, body, "has not sent its doctor report yet")
		_, body = get(t, c, e.url+"/machines/web-old")
		require.Contains(t, body, "This agent (protocol 3) does not send its doctor report: upgrade it.")

		require.NoError(t, e.srv.Store.SetMachineDoctor(ctx, m.ID, &deskrun.DoctorReport{At: time.Now().Add(-2 * time.Minute), Checks: []deskrun.DoctorCheck{
			{Name: "root", Status: "pass", Detail: "running as root, as the agent does", Fix: "never shown for a pass"},
			{Name: "pam service batch", Status: "fail", Detail: "/etc/pam.d/deskrun-batch missing: batch logons are refused", Fix: "deskrun agent install-pam"},
			{Name: "directory service account", Status: "warn", Detail: "none configured <b>", Fix: "add service_user"},
			{Name: "clock skew", Status: "skip", Detail: "skipped: no domain configured"},
		}}))
		res, body := get(t, c, e.url+"/machines/web-doc")
		require.Equal(t, http.StatusOK, res.StatusCode)
		require.Contains(t, body, `<span class="state state-pass">1 pass</span> <span class="state state-warn">1 warn</span> <span class="state state-fail">1 fail</span> <span class="state state-skip">1 skipped</span>`)
		require.Contains(t, body, "received 2m ago")
		require.Regexp(t, `(?s)<tr class="check-fail">\s*<td><span class="state state-fail">fail</span></td>\s*<td>pam service batch</td>\s*`+
			`<td class="detail">/etc/pam.d/deskrun-batch missing: batch logons are refused</td>\s*<td class="fix">deskrun agent install-pam</td>`, body)
		require.Contains(t, body, "none configured &lt;b&gt;", "the agent's text is escaped")
		require.NotContains(t, body, "never shown for a pass")
		require.NotContains(t, body, "has not sent its doctor report")
	})

	t.Run("catalog search by any code form", func(t *testing.T) {
		c := e.browser(t)
		e.signIn(t, c, "vic", "vic-password")
		for _, q := range []string{"-1073741477", "0xC000015B", "LogonTypeNotGranted", "1385"} {
			_, body := get(t, c, e.url+"/catalog?q="+url.QueryEscape(q))
			require.Contains(t, body, `id="e-LogonTypeNotGranted"`, q)
			require.Contains(t, body, "0xC000015B", q)
			require.Contains(t, body, "-1073741477", q)
		}
	})

	t.Run("CSRF", func(t *testing.T) {
		c := e.browser(t)
		csrf := e.signIn(t, c, "ada", "ada-password")
		form := url.Values{"name": {"x"}, "machine": {"none"}, "username": {"u"}, "password": {"p"}}
		res, body := post(t, c, e.url+"/connections", form)
		require.Equal(t, http.StatusForbidden, res.StatusCode, body)
		require.Contains(t, body, "security token")
		form.Set("csrf", "wrong")
		res, _ = post(t, c, e.url+"/connections", form)
		require.Equal(t, http.StatusForbidden, res.StatusCode)
		// With the token the use case runs (and says the machine does not exist).
		form.Set("csrf", csrf)
		res, body = post(t, c, e.url+"/connections", form)
		require.Equal(t, http.StatusNotFound, res.StatusCode, body)
		require.Contains(t, body, "no machine has the id or name")
		// A cross-site POST is refused before anything else.
		res, _ = post(t, c, e.url+"/connections", form, "Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site")
		require.Equal(t, http.StatusForbidden, res.StatusCode)
	})

	t.Run("a viewer cannot create a connection", func(t *testing.T) {
		c := e.browser(t)
		csrf := e.signIn(t, c, "vic", "vic-password")
		_, body := get(t, c, e.url+"/connections")
		require.NotContains(t, body, `id="create-form"`)
		require.NotContains(t, body, "Re-test")
		res, body := post(t, c, e.url+"/connections", url.Values{"csrf": {csrf}, "name": {"x"}, "machine": {"m"}, "username": {"u"}, "password": {"p"}})
		require.Equal(t, http.StatusForbidden, res.StatusCode)
		require.Contains(t, body, "needs the maker role")
		res, _ = get(t, c, e.url+"/audit")
		require.Equal(t, http.StatusForbidden, res.StatusCode)
	})

	t.Run("sign in with an API token; revoking it ends the session", func(t *testing.T) {
		tok, secret, err := e.srv.Control.CreateToken(ctx, wire.TokenCreate{Kind: "api", Role: "maker"})
		require.NoError(t, err)
		c := e.browser(t)
		res, _ := post(t, c, e.url+"/signin", url.Values{"token": {secret}})
		require.Equal(t, http.StatusSeeOther, res.StatusCode)
		res, body := get(t, c, e.url+"/connections")
		require.Equal(t, http.StatusOK, res.StatusCode)
		require.Contains(t, body, "token:"+tok.ID)
		require.Contains(t, body, `id="create-form"`)
		require.NoError(t, e.srv.Control.RevokeToken(ctx, tok.ID))
		res, _ = get(t, c, e.url+"/connections")
		require.Equal(t, http.StatusSeeOther, res.StatusCode)
	})

	t.Run("sign out", func(t *testing.T) {
		c := e.browser(t)
		csrf := e.signIn(t, c, "ada", "ada-password")
		res, _ := post(t, c, e.url+"/signout", url.Values{"csrf": {csrf}})
		require.Equal(t, http.StatusSeeOther, res.StatusCode)
		res, _ = get(t, c, e.url+"/")
		require.Equal(t, http.StatusSeeOther, res.StatusCode)
	})

	t.Run("cloud flows: triggers, typed run form, roles, the run's timeline", func(t *testing.T) {
		target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"echo": "`+r.URL.Query().Get("n")+`"}`)
		}))
		t.Cleanup(target.Close)
		err := e.srv.Control.SetSecret(ctx, control.Actor{ID: "test"}, "web_hook", []byte("s3cret"))
		require.NoError(t, err)
		def := "name: web-flow\ndescription: pings a target\ninputs:\n  - {name: n, type: number, required: true}\n  - {name: loud, type: boolean, default: false}\n" +
			"triggers:\n  webhook: {id: web, secret: web_hook}\n  schedule: {cron: '0 9 * * 1-5', timezone: Europe/Paris, inputs: {n: 1}}\n" +
			"steps:\n  - id: ping\n    http: {url: '" + target.URL + "/?n=${{ string(inputs.n) }}'}\noutputs:\n  echo: '${{ steps.ping.outputs.body.echo }}'\n"
		_, _, _, err = e.srv.Control.ApplyFlow(ctx, control.Actor{ID: "test"}, "web.flow.yaml", []byte(def))
		require.NoError(t, err)

		v := e.browser(t)
		vcsrf := e.signIn(t, v, "vic", "vic-password")
		res, body := get(t, v, e.url+"/flows")
		require.Equal(t, http.StatusOK, res.StatusCode, body)
		require.Contains(t, body, e.url+"/hooks/web")
		require.Contains(t, body, "0 9 * * 1-5")
		require.Contains(t, body, "Europe/Paris")
		require.Contains(t, body, "next tick")
		res, body = get(t, v, e.url+"/flows/web-flow")
		require.Equal(t, http.StatusOK, res.StatusCode, body)
		require.Contains(t, body, "pings a target")
		require.NotContains(t, body, `id="run-form"`, "a viewer sees the run form")
		res, body = post(t, v, e.url+"/flows/web-flow/runs", url.Values{"csrf": {vcsrf}, "input.n": {"7"}})
		require.Equal(t, http.StatusForbidden, res.StatusCode)
		require.Contains(t, body, "needs the maker role")

		a := e.browser(t)
		csrf := e.signIn(t, a, "ada", "ada-password")
		_, body = get(t, a, e.url+"/flows/web-flow")
		require.Contains(t, body, `id="run-form"`)
		require.Contains(t, body, `type="number"`)
		require.Contains(t, body, `<option value="">default (false)</option>`)
		res, _ = post(t, a, e.url+"/flows/web-flow/runs", url.Values{"input.n": {"7"}})
		require.Equal(t, http.StatusForbidden, res.StatusCode, "no CSRF token")
		res, body = post(t, a, e.url+"/flows/web-flow/runs", url.Values{"csrf": {csrf}, "input.n": {"many"}})
		require.Equal(t, http.StatusBadRequest, res.StatusCode)
		require.Contains(t, body, deskrun.CodeFlowInputInvalid)
		require.Contains(t, body, `value="many"`, "the form keeps what was typed")
		res, _ = post(t, a, e.url+"/flows/web-flow/runs", url.Values{"csrf": {csrf}, "input.n": {"7"}, "input.loud": {""}})
		require.Equal(t, http.StatusSeeOther, res.StatusCode)
		loc := res.Header.Get("Location")
		require.True(t, strings.HasPrefix(loc, "/flowruns/f_"), loc)
		require.Eventually(t, func() bool {
			_, body = get(t, v, e.url+loc+"/summary")
			return strings.Contains(body, "state-succeeded")
		}, 20*time.Second, 50*time.Millisecond)
		res, body = get(t, v, e.url+loc)
		require.Equal(t, http.StatusOK, res.StatusCode, body)
		require.Contains(t, body, "<strong>manual</strong>")
		require.Contains(t, body, `id="step-ping-1"`)
		require.Contains(t, body, `id="flow-outputs"`)
		require.NotContains(t, body, "hx-trigger", "a finished run is not polled")
		_, body = get(t, v, e.url+"/flows/web-flow")
		require.Contains(t, body, loc)
	})

	t.Run("static files are embedded", func(t *testing.T) {
		res, body := get(t, e.browser(t), e.url+"/static/htmx.min.js")
		require.Equal(t, http.StatusOK, res.StatusCode)
		require.Contains(t, body, `version:"2.0.11"`)
	})
}
