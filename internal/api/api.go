// Package api is the JSON face of deskrun over the control use cases:
// routes under /api/v1, bearer-token auth, request ids, size limits, and
// one function that turns any error into the envelope of DESIGN.md §9 with
// its HTTP status.
package api

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/control"
	"github.com/deskrun/deskrun/internal/store"
	"github.com/deskrun/deskrun/internal/wire"
)

// Config tunes the API.
type Config struct {
	// MaxBodyBytes bounds every request body.
	MaxBodyBytes int64
	Version      string
}

// API serves /api/v1.
type API struct {
	cfg     Config
	svc     *control.Service
	log     *slog.Logger
	mux     *http.ServeMux
	metrics *metrics
	// bodyLimits are the routes whose body limit is not
	// cfg.MaxBodyBytes, by pattern.
	bodyLimits map[string]int64
}

type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// New builds the API handler. reg may be nil.
func New(cfg Config, svc *control.Service, log *slog.Logger, reg prometheus.Registerer) *API {
	a := &API{cfg: cfg, svc: svc, log: log, mux: http.NewServeMux(), metrics: &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "deskrun_api_requests_total", Help: "API requests by route and status."}, []string{"route", "status"}),
		latency:  prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "deskrun_api_request_seconds", Help: "API request latency by route.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"route"}),
	}}
	if reg != nil {
		reg.MustRegister(a.metrics.requests, a.metrics.latency)
	}
	a.routes()
	return a
}

// route registers a handler that needs a token with at least role.
func (a *API) route(pattern string, role deskrun.Role, h func(w http.ResponseWriter, r *http.Request) error) {
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if role != "" {
			tok, err := a.svc.Authenticate(r.Context(), bearer(r))
			if err == nil {
				err = control.Authorize(tok, role)
			}
			if err != nil {
				a.Error(w, r, err)
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), actorKey{}, control.Actor{ID: "token:" + tok.ID, Role: tok.Role}))
		}
		if err := h(w, r); err != nil {
			a.Error(w, r, err)
		}
	})
}

// bodyLimit gives the route pattern a body limit other than
// Config.MaxBodyBytes; ServeHTTP applies it before the handler runs.
func (a *API) bodyLimit(pattern string, n int64) {
	if a.bodyLimits == nil {
		a.bodyLimits = map[string]int64{}
	}
	a.bodyLimits[pattern] = n
}

func (a *API) routes() {
	a.route("GET /api/v1/openapi.json", "", a.openAPI)
	a.route("POST /api/v1/agent/enroll", "", a.enroll)
	a.mux.HandleFunc("GET /api/v1/agent/connect", a.agentConnect)

	a.route("GET /api/v1/machines", deskrun.RoleViewer, a.listMachines)
	a.route("GET /api/v1/machines/{machine}", deskrun.RoleViewer, a.getMachine)
	a.route("PATCH /api/v1/machines/{machine}", deskrun.RoleAdmin, a.updateMachine)
	a.route("DELETE /api/v1/machines/{machine}", deskrun.RoleAdmin, a.deleteMachine)

	a.route("POST /api/v1/tokens", deskrun.RoleAdmin, a.createToken)
	a.route("GET /api/v1/tokens", deskrun.RoleAdmin, a.listTokens)
	a.route("DELETE /api/v1/tokens/{token}", deskrun.RoleAdmin, a.revokeToken)

	a.route("POST /api/v1/connections", deskrun.RoleMaker, a.createConnection)
	a.route("GET /api/v1/connections", deskrun.RoleViewer, a.listConnections)
	a.route("GET /api/v1/connections/{connection}", deskrun.RoleViewer, a.getConnection)
	a.route("PATCH /api/v1/connections/{connection}", deskrun.RoleMaker, a.updateConnection)
	a.route("DELETE /api/v1/connections/{connection}", deskrun.RoleMaker, a.deleteConnection)
	a.route("POST /api/v1/connections/{connection}/test", deskrun.RoleMaker, a.testConnection)
	a.route("GET /api/v1/audit", deskrun.RoleAdmin, a.listAudit)

	a.desktopFlowRoutes()

	a.runRoutes()

	a.flowRoutes()

	a.userRoutes()

	a.route("POST /api/v1/jobs", deskrun.RoleMaker, a.createJob)
	a.route("GET /api/v1/jobs", deskrun.RoleViewer, a.listJobs)
	a.route("GET /api/v1/jobs/{job}", deskrun.RoleViewer, a.getJob)
	a.route("POST /api/v1/jobs/{job}/cancel", deskrun.RoleMaker, a.cancelJob)
}

// ServeHTTP adds a request id, a body limit, panic recovery and metrics,
// and answers unknown routes and methods with the error envelope.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rid := r.Header.Get("X-Request-Id")
	if rid == "" || len(rid) > 64 {
		rid = newRequestID()
	}
	w.Header().Set("X-Request-Id", rid)
	r = r.WithContext(context.WithValue(r.Context(), ridKey{}, rid))
	_, pattern := a.mux.Handler(r)
	if r.Body != nil {
		limit, ok := a.bodyLimits[pattern]
		if !ok {
			limit = a.cfg.MaxBodyBytes
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
	}
	sw := &statusWriter{ResponseWriter: w, status: 200}
	defer func() {
		if p := recover(); p != nil {
			// Log the panic's type and location only: its value could hold
			// request data.
			a.log.Error("panic in handler", "route", pattern, "request_id", rid, "panic_type", fmt.Sprintf("%T", p))
			a.Error(sw, r, errors.New("panic"))
		}
		route := pattern
		if route == "" {
			route = "unmatched"
		}
		a.metrics.requests.WithLabelValues(route, strconv.Itoa(sw.status)).Inc()
		a.metrics.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
	}()
	if pattern == "" {
		a.unmatched(sw, r)
		return
	}
	a.mux.ServeHTTP(sw, r) // sets r.PathValue, which mux.Handler does not
}

// unmatched tells a route that does not exist from a method it does not
// allow.
func (a *API) unmatched(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{"GET", "POST", "PUT", "PATCH", "DELETE"} {
		r2 := r.Clone(r.Context())
		r2.Method = m
		if _, p := a.mux.Handler(r2); p != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		a.Error(w, r, &deskrun.Error{Code: deskrun.CodeMethodNotAllowed, Message: fmt.Sprintf("%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, strings.Join(allow, ", "))})
		return
	}
	a.Error(w, r, &deskrun.Error{Code: deskrun.CodeRouteNotFound, Message: fmt.Sprintf("no API route %s %s", r.Method, r.URL.Path),
		Resolution: "See /api/v1/openapi.json for the routes."})
}

type ridKey struct{}

type actorKey struct{}

// actor returns who made an authenticated request.
func actor(r *http.Request) control.Actor {
	a, _ := r.Context().Value(actorKey{}).(control.Actor)
	return a
}

// RequestID returns the request id of ctx.
func RequestID(ctx context.Context) string {
	s, _ := ctx.Value(ridKey{}).(string)
	return s
}

func newRequestID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int)        { w.status = code; w.ResponseWriter.WriteHeader(code) }
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if t, ok := strings.CutPrefix(h, "Bearer "); ok {
		return strings.TrimSpace(t)
	}
	return ""
}

// StatusOf maps an error code to its HTTP status. It is the only place
// that does.
func StatusOf(code string) int {
	switch code {
	case deskrun.CodeInvalid, deskrun.CodeMalformedJSON, deskrun.CodeDesktopFlowInvalid, deskrun.CodeDesktopFlowInputInvalid,
		deskrun.CodeDesktopFlowPackageInvalid, deskrun.CodeFlowInvalid, deskrun.CodeFlowInputInvalid:
		return http.StatusBadRequest
	case deskrun.CodeWebhookSignatureInvalid:
		return http.StatusUnauthorized
	case deskrun.CodeUnauthorized, deskrun.CodeEnrollmentTokenInvalid, deskrun.CodeEnrollmentTokenExpired,
		deskrun.CodeEnrollmentTokenUsedUp, deskrun.CodeAgentAuthFailed:
		return http.StatusUnauthorized
	case deskrun.CodeForbidden:
		return http.StatusForbidden
	case deskrun.CodeNoCandidateMachine, deskrun.CodeSessionExistsUnattended, deskrun.CodeAttendedUserNotLoggedIn:
		return http.StatusConflict
	case deskrun.CodeNotFound, deskrun.CodeRouteNotFound:
		return http.StatusNotFound
	case deskrun.CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case deskrun.CodeConflict, deskrun.CodeMachineNameTaken, deskrun.CodeMachineOffline, deskrun.CodeConnectionBroken:
		return http.StatusConflict
	case deskrun.CodeSealedCredentialInvalid:
		return http.StatusUnprocessableEntity
	case deskrun.CodeConnectionTestTimeout:
		return http.StatusGatewayTimeout
	case deskrun.CodeBodyTooLarge, deskrun.CodeDesktopFlowPackageTooLarge:
		return http.StatusRequestEntityTooLarge
	case deskrun.CodeWindowsIdentityIncorrect:
		return http.StatusUnprocessableEntity
	case deskrun.CodeUnavailable:
		return http.StatusServiceUnavailable
	case deskrun.CodeAgentProtocolTooOld:
		return http.StatusUpgradeRequired
	}
	return http.StatusInternalServerError
}

// Error writes err as the error envelope. Errors that are not
// *deskrun.Error are internal: logged here once with the request id and
// shown as "internal error".
func (a *API) Error(w http.ResponseWriter, r *http.Request, err error) {
	rid := RequestID(r.Context())
	var de *deskrun.Error
	if !errors.As(err, &de) {
		a.log.Error("internal error", "method", r.Method, "path", r.URL.Path, "request_id", rid, "err", err)
		de = &deskrun.Error{Code: deskrun.CodeInternal, Message: "internal error; the server's log has the details under this request id"}
	}
	out := *de
	out.RequestID = rid
	writeJSON(w, StatusOf(out.Code), wire.ErrorEnvelope{Error: &out})
}

// listOf converts each item of a list for the wire. The result is never
// nil, so an empty list is [] in JSON, not null.
func listOf[T, U any](xs []T, conv func(T) U) []U {
	out := make([]U, 0, len(xs))
	for _, x := range xs {
		out = append(out, conv(x))
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decode reads a JSON body into v: unknown fields, trailing data, syntax
// errors and oversized bodies are each a named error.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			return &deskrun.Error{Code: deskrun.CodeMalformedJSON, Message: "the body holds more than one JSON value"}
		}
		return nil
	}
	var mbe *http.MaxBytesError
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &mbe):
		return &deskrun.Error{Code: deskrun.CodeBodyTooLarge, Message: fmt.Sprintf("the request body is over the limit of %d bytes", mbe.Limit)}
	case errors.As(err, &se):
		return &deskrun.Error{Code: deskrun.CodeMalformedJSON, Message: fmt.Sprintf("the body is not valid JSON (at byte %d): %v", se.Offset, se)}
	case errors.As(err, &te):
		return &deskrun.Error{Code: deskrun.CodeInvalid, Field: te.Field, Message: fmt.Sprintf("field %q must be a %s", te.Field, te.Type)}
	case errors.Is(err, io.EOF):
		return &deskrun.Error{Code: deskrun.CodeMalformedJSON, Message: "the body is empty; a JSON object is required"}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &deskrun.Error{Code: deskrun.CodeMalformedJSON, Message: "the body ends in the middle of a JSON value"}
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return &deskrun.Error{Code: deskrun.CodeInvalid, Message: strings.TrimPrefix(err.Error(), "json: ")}
	}
	return &deskrun.Error{Code: deskrun.CodeMalformedJSON, Message: "the body is not valid JSON"}
}

func (a *API) enroll(w http.ResponseWriter, r *http.Request) error {
	var req wire.EnrollRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	m, err := a.svc.Enroll(r.Context(), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, wire.EnrollResponse{Machine: wire.MachineFrom(m)})
	return nil
}

func (a *API) agentConnect(w http.ResponseWriter, r *http.Request) {
	ws, err := websocket.Accept(smallHijack{w}, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return // Accept has written the HTTP error
	}
	a.svc.Hub.Serve(r.Context(), ws, r.RemoteAddr)
}

// hijackBufSize is the size of the read and write buffers an agent's
// WebSocket keeps for its life.
const hijackBufSize = 512

// smallHijack hands the hijacked connection over with hijackBufSize
// buffers instead of net/http's 4 KB reader and 4 KB writer: coder/websocket
// keeps what Hijack returns for the connection's life, and those 8 KB were
// a fifth of what an idle agent cost the server. Frames of any size still
// pass: a bufio read or write larger than its buffer goes straight to the
// connection.
type smallHijack struct{ http.ResponseWriter }

func (w smallHijack) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w smallHijack) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	small, err := rebuffer(conn, brw, hijackBufSize)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, small, nil
}

// rebuffer replaces brw, whose buffers read and write conn, with buffers
// of size bytes. What brw has buffered is kept: bytes the client sent after
// its request are read first, and pending output is written now.
func rebuffer(conn net.Conn, brw *bufio.ReadWriter, size int) (*bufio.ReadWriter, error) {
	if err := brw.Flush(); err != nil {
		return nil, err
	}
	var r io.Reader = conn
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		r = io.MultiReader(bytes.NewReader(bytes.Clone(b)), conn)
	}
	return bufio.NewReadWriter(bufio.NewReaderSize(r, size), bufio.NewWriterSize(conn, size)), nil
}

func (a *API) listMachines(w http.ResponseWriter, r *http.Request) error {
	ms, err := a.svc.Machines(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.MachineList{Machines: listOf(ms, func(m *deskrun.Machine) wire.Machine {
		out := wire.MachineFrom(m)
		out.Doctor = nil // the list stays light: GET one machine has the report
		return out
	})})
	return nil
}

func (a *API) getMachine(w http.ResponseWriter, r *http.Request) error {
	m, err := a.svc.Machine(r.Context(), r.PathValue("machine"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.MachineFrom(m))
	return nil
}

func (a *API) updateMachine(w http.ResponseWriter, r *http.Request) error {
	var req wire.MachineUpdate
	if err := decode(r, &req); err != nil {
		return err
	}
	m, err := a.svc.UpdateMachine(r.Context(), r.PathValue("machine"), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.MachineFrom(m))
	return nil
}

func (a *API) deleteMachine(w http.ResponseWriter, r *http.Request) error {
	if err := a.svc.DeleteMachine(r.Context(), r.PathValue("machine")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) createToken(w http.ResponseWriter, r *http.Request) error {
	var req wire.TokenCreate
	if err := decode(r, &req); err != nil {
		return err
	}
	t, secret, err := a.svc.CreateToken(r.Context(), req)
	if err != nil {
		return err
	}
	out := wire.TokenFrom(t)
	out.Secret = secret
	writeJSON(w, http.StatusCreated, out)
	return nil
}

func (a *API) listTokens(w http.ResponseWriter, r *http.Request) error {
	ts, err := a.svc.ListTokens(r.Context(), r.URL.Query().Get("kind"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.TokenList{Tokens: listOf(ts, wire.TokenFrom)})
	return nil
}

func (a *API) revokeToken(w http.ResponseWriter, r *http.Request) error {
	if err := a.svc.RevokeToken(r.Context(), r.PathValue("token")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) createJob(w http.ResponseWriter, r *http.Request) error {
	var req wire.JobCreate
	if err := decode(r, &req); err != nil {
		return err
	}
	wait, err := waitParam(r)
	if err != nil {
		return err
	}
	j, err := a.svc.CreateJob(r.Context(), req)
	if err != nil {
		return err
	}
	if wait > 0 {
		if j, err = a.svc.Job(r.Context(), j.ID, wait); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusCreated, wire.JobFrom(j))
	return nil
}

// waitParam reads ?wait=DURATION (at most maxWait).
func waitParam(r *http.Request) (time.Duration, error) {
	s := r.URL.Query().Get("wait")
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "wait", Message: fmt.Sprintf("wait %q is not a duration such as 30s", s)}
	}
	return min(d, maxWait), nil
}

// maxWait bounds ?wait= so a client cannot hold a request forever.
const maxWait = 5 * time.Minute

// limitParam reads a list's ?limit= (1 to 1000, 100 when absent).
func limitParam(r *http.Request) (int, error) {
	s := r.URL.Query().Get("limit")
	if s == "" {
		return 100, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 1000 {
		return 0, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "limit", Message: "limit must be between 1 and 1000"}
	}
	return n, nil
}

// parseVersion reads a flow version given in a path or a query: a number
// from 1.
func parseVersion(s string) (int, error) {
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 {
		return 0, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "version", Message: fmt.Sprintf("version %q is not a number from 1", s)}
	}
	return v, nil
}

// createdStatus is the status of a create that may find its resource
// there already (the same content pushed or applied again).
func createdStatus(created bool) int {
	if created {
		return http.StatusCreated
	}
	return http.StatusOK
}

// machineParam resolves a list's ?machine= filter (an id or a name) to
// the machine's id; "" when absent.
func (a *API) machineParam(r *http.Request) (string, error) {
	s := r.URL.Query().Get("machine")
	if s == "" {
		return "", nil
	}
	m, err := a.svc.Machine(r.Context(), s)
	if err != nil {
		return "", err
	}
	return m.ID, nil
}

// connectionParam resolves a list's ?connection= filter (an id or a
// name) to the connection's id; "" when absent.
func (a *API) connectionParam(r *http.Request) (string, error) {
	s := r.URL.Query().Get("connection")
	if s == "" {
		return "", nil
	}
	c, err := a.svc.Connection(r.Context(), s)
	if err != nil {
		return "", err
	}
	return c.ID, nil
}

func (a *API) getJob(w http.ResponseWriter, r *http.Request) error {
	wait, err := waitParam(r)
	if err != nil {
		return err
	}
	j, err := a.svc.Job(r.Context(), r.PathValue("job"), wait)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.JobFrom(j))
	return nil
}

func (a *API) listJobs(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	var f store.JobFilter
	var err error
	if f.MachineID, err = a.machineParam(r); err != nil {
		return err
	}
	if s := q.Get("state"); s != "" {
		f.States = []deskrun.JobState{deskrun.JobState(s)}
	}
	if f.Limit, err = limitParam(r); err != nil {
		return err
	}
	js, err := a.svc.Jobs(r.Context(), f)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.JobList{Jobs: listOf(js, wire.JobFrom)})
	return nil
}

func (a *API) cancelJob(w http.ResponseWriter, r *http.Request) error {
	if err := a.svc.CancelJob(r.Context(), r.PathValue("job")); err != nil {
		return err
	}
	j, err := a.svc.Job(r.Context(), r.PathValue("job"), 0)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.JobFrom(j))
	return nil
}
