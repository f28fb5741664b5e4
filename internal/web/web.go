// Package web is deskrun's console: server-rendered HTML pages over the
// control use cases (the same calls the API makes, never the API over
// HTTP), with htmx for forms and partial updates and Server-Sent Events for
// live run logs and machine state. Templates and static files are embedded,
// so the console works without the internet.
//
// Security: a session cookie (__Host-, HttpOnly, Secure, SameSite=Strict)
// holds a random secret whose SHA-256 the store keeps; every POST carries
// the session's CSRF token and passes net/http's cross-origin check; every
// handler authorizes the actor with the same roles as the API.
package web

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/api"
	"github.com/deskrun/deskrun/internal/control"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// CookieName is the session cookie. The __Host- prefix makes the browser
// refuse it unless it is Secure, has Path=/ and no Domain.
const CookieName = "__Host-deskrun_session"

// Console serves the web console.
type Console struct {
	svc     *control.Service
	log     *slog.Logger
	version string
	pages   map[string]*template.Template
	mux     *http.ServeMux
	handler http.Handler
}

// New builds the console.
func New(svc *control.Service, log *slog.Logger, version string) (*Console, error) {
	c := &Console{svc: svc, log: log, version: version, pages: map[string]*template.Template{}, mux: http.NewServeMux()}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		base := strings.TrimPrefix(n, "templates/")
		if base == "layout.html" || base == "partials.html" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/partials.html", n)
		if err != nil {
			return nil, fmt.Errorf("template %s: %w", base, err)
		}
		c.pages[base] = t
	}
	c.routes()
	// CrossOriginProtection refuses a non-safe request that the browser
	// marks as cross-site (Sec-Fetch-Site, or Origin against Host): login
	// CSRF is stopped before any session exists; the per-session token
	// covers the rest.
	c.handler = http.NewCrossOriginProtection().Handler(c.mux)
	return c, nil
}

// ServeHTTP adds the security headers and serves the console.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Strict-Transport-Security", "max-age=31536000")
	c.handler.ServeHTTP(w, r)
}

func (c *Console) routes() {
	static, _ := fs.Sub(staticFS, "static")
	fileServer := http.FileServerFS(static)
	c.mux.Handle("GET /static/", http.StripPrefix("/static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		fileServer.ServeHTTP(w, r)
	})))
	c.mux.HandleFunc("GET /signin", c.signInPage)
	c.mux.HandleFunc("POST /signin", c.signIn)
	c.handle("POST /signout", deskrun.RoleViewer, c.signOut)

	c.handle("GET /{$}", deskrun.RoleViewer, c.overview)
	c.handle("GET /machines", deskrun.RoleViewer, c.machines)
	c.handle("GET /machines/{machine}", deskrun.RoleViewer, c.machine)
	c.handle("GET /events/machines", deskrun.RoleViewer, c.machineEvents)

	c.handle("GET /connections", deskrun.RoleViewer, c.connections)
	c.handle("POST /connections", deskrun.RoleMaker, c.createConnection)
	c.handle("GET /connections/{connection}", deskrun.RoleViewer, c.connection)
	c.handle("POST /connections/{connection}", deskrun.RoleMaker, c.updateConnection)
	c.handle("POST /connections/{connection}/test", deskrun.RoleMaker, c.testConnection)

	c.handle("GET /desktopflows", deskrun.RoleViewer, c.desktopFlows)
	c.handle("GET /desktopflows/{flow}", deskrun.RoleViewer, c.desktopFlow)
	c.handle("POST /desktopflows/{flow}/runs", deskrun.RoleMaker, c.startRun)

	c.handle("GET /flows", deskrun.RoleViewer, c.cloudFlows)
	c.handle("GET /flows/{flow}", deskrun.RoleViewer, c.cloudFlowPage)
	c.handle("POST /flows/{flow}/runs", deskrun.RoleMaker, c.startFlowRun)
	c.handle("GET /flowruns/{run}", deskrun.RoleViewer, c.flowRunPage)
	c.handle("GET /flowruns/{run}/summary", deskrun.RoleViewer, c.flowRunSummary)

	c.handle("GET /runs", deskrun.RoleViewer, c.runs)
	c.handle("GET /runs/{run}", deskrun.RoleViewer, c.run)
	c.handle("GET /runs/{run}/summary", deskrun.RoleViewer, c.runSummary)
	c.handle("GET /runs/{run}/screenshot.png", deskrun.RoleViewer, c.runScreenshot)
	c.handle("GET /runs/{run}/events", deskrun.RoleViewer, c.runEvents)
	c.handle("POST /runs/{run}/cancel", deskrun.RoleMaker, c.cancelRun)

	c.handle("GET /catalog", deskrun.RoleViewer, c.catalog)
	c.handle("GET /audit", deskrun.RoleAdmin, c.audit)
}

// req is an authenticated console request.
type req struct {
	*http.Request
	actor   control.Actor
	session *deskrun.Session
}

// handle registers a page or action that needs a session with at least
// role. A POST must also carry the session's CSRF token.
func (c *Console) handle(pattern string, role deskrun.Role, h func(w http.ResponseWriter, r *req) error) {
	c.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		secret := ""
		if ck, err := r.Cookie(CookieName); err == nil {
			secret = ck.Value
		}
		se, actor, err := c.svc.Session(r.Context(), secret)
		if err != nil {
			if deskrun.IsCode(err, deskrun.CodeUnauthorized) {
				c.toSignIn(w, r)
				return
			}
			c.fail(w, r, nil, err)
			return
		}
		rq := &req{Request: r, actor: actor, session: se}
		if r.Method == http.MethodPost && !validCSRF(r, se.CSRF) {
			c.fail(w, r, rq, &deskrun.Error{Code: deskrun.CodeForbidden, Message: "the form's security token is missing or stale",
				Resolution: "Reload the page and submit the form again."})
			return
		}
		if err := actor.Authorize(role); err != nil {
			c.fail(w, r, rq, err)
			return
		}
		if err := h(w, rq); err != nil {
			c.fail(w, r, rq, err)
		}
	})
}

func validCSRF(r *http.Request, want string) bool {
	got := r.Header.Get("X-CSRF-Token")
	if got == "" {
		got = r.PostFormValue("csrf")
	}
	return got != "" && constantEqual(got, want)
}

// toSignIn sends an anonymous visitor to the sign-in page, coming back to
// the page they asked for.
func (c *Console) toSignIn(w http.ResponseWriter, r *http.Request) {
	target := "/signin"
	if r.Method == http.MethodGet && r.URL.Path != "/" && !strings.HasPrefix(r.URL.Path, "/events/") {
		target += "?next=" + url.QueryEscape(r.URL.RequestURI())
	}
	if r.Header.Get("HX-Request") == "true" {
		w.Header().Set("HX-Redirect", target)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if strings.HasSuffix(r.URL.Path, "/events") || strings.HasPrefix(r.URL.Path, "/events/") {
		http.Error(w, "sign in", http.StatusUnauthorized)
		return
	}
	http.Redirect(w, r, target, http.StatusSeeOther)
}

// view is what every page template gets.
type view struct {
	Title   string
	Nav     string
	Actor   control.Actor
	CSRF    string
	Version string
	Data    any
}

func (v view) CanMake() bool  { return v.Actor.Role.Allows(deskrun.RoleMaker) }
func (v view) IsAdmin() bool  { return v.Actor.Role.Allows(deskrun.RoleAdmin) }
func (v view) SignedIn() bool { return v.Actor.ID != "" }

func (c *Console) view(r *req, title, nav string, data any) view {
	v := view{Title: title, Nav: nav, Version: c.version, Data: data}
	if r != nil {
		v.Actor = r.actor
		if r.session != nil {
			v.CSRF = r.session.CSRF
		}
	}
	return v
}

// page renders a whole page.
func (c *Console) page(w http.ResponseWriter, status int, page string, v view) error {
	return c.render(w, status, page, "layout", v)
}

// render renders one template of a page's set (the page itself, or a
// fragment for htmx) into a buffer first, so a template error never sends
// half a page.
func (c *Console) render(w http.ResponseWriter, status int, page, name string, data any) error {
	t := c.pages[page]
	if t == nil {
		return fmt.Errorf("no template %s", page)
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, name, data); err != nil {
		return fmt.Errorf("render %s/%s: %w", page, name, err)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, err := w.Write(buf.Bytes())
	return err
}

// fail shows an error: as a fragment to htmx, as a page otherwise.
// Errors that are not *deskrun.Error are internal: logged once, shown as
// "internal error".
func (c *Console) fail(w http.ResponseWriter, r *http.Request, rq *req, err error) {
	var de *deskrun.Error
	if !errors.As(err, &de) {
		c.log.Error("console internal error", "method", r.Method, "path", r.URL.Path, "err", err)
		de = &deskrun.Error{Code: deskrun.CodeInternal, Message: "internal error; the server's log has the details"}
	}
	status := api.StatusOf(de.Code)
	if r.Header.Get("HX-Request") == "true" {
		if rerr := c.render(w, status, "error.html", "error-box", de); rerr != nil {
			c.log.Error("render error", "err", rerr)
		}
		return
	}
	if rerr := c.page(w, status, "error.html", c.view(rq, "Error", "", de)); rerr != nil {
		c.log.Error("render error", "err", rerr)
	}
}

var funcs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		d := time.Since(t).Round(time.Second)
		switch {
		case d < time.Minute:
			return fmt.Sprintf("%ds ago", int(d.Seconds()))
		case d < time.Hour:
			return fmt.Sprintf("%dm ago", int(d.Minutes()))
		case d < 48*time.Hour:
			return fmt.Sprintf("%dh ago", int(d.Hours()))
		}
		return fmt.Sprintf("%dd ago", int(d.Hours()/24))
	},
	"hexstatus": func(dec int64) string {
		if dec == 0 {
			return ""
		}
		return deskrun.FormatStatus(uint32(int32(dec)))
	},
	"dict": func(kv ...any) map[string]any {
		m := make(map[string]any, len(kv)/2)
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	},
	"list": func(s ...string) []string { return s },
	// present tells a declared value (false, 0, "") from none.
	"present": func(v any) bool { return v != nil },
	// json shows a value as it was given: a string as is, others as JSON.
	"json": func(v any) string {
		if s, ok := v.(string); ok {
			return s
		}
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Sprint(v)
		}
		return string(b)
	},
	// triggerKind is what started a flow run: manual, api, schedule, webhook.
	"triggerKind": func(raw json.RawMessage) string {
		var t struct {
			Kind string `json:"kind"`
		}
		if json.Unmarshal(raw, &t) != nil || t.Kind == "" {
			return "—"
		}
		return t.Kind
	},
}
