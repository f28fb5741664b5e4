package web

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/api"
	"github.com/deskrun/deskrun/internal/desktopflow"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/store"
	"github.com/deskrun/deskrun/internal/wire"
)

// names maps machine and connection ids to names for the tables.
type names struct {
	Machines    map[string]string
	Connections map[string]string
}

// names reads the machines and connections to name them. A page that has
// read either list already names them with namesOf instead.
func (c *Console) names(ctx context.Context) (names, error) {
	ms, err := c.svc.Machines(ctx)
	if err != nil {
		return names{}, err
	}
	cs, err := c.svc.Connections(ctx)
	if err != nil {
		return names{}, err
	}
	return namesOf(ms, cs), nil
}

func namesOf(ms []*deskrun.Machine, cs []*deskrun.Connection) names {
	n := names{Machines: make(map[string]string, len(ms)), Connections: make(map[string]string, len(cs))}
	for _, m := range ms {
		n.Machines[m.ID] = m.Name
	}
	for _, cn := range cs {
		n.Connections[cn.ID] = cn.Name
	}
	return n
}

func (n names) Machine(id string) string {
	if s, ok := n.Machines[id]; ok {
		return s
	}
	return id
}

func (n names) Connection(id string) string {
	if s, ok := n.Connections[id]; ok {
		return s
	}
	return id
}

// --- Overview ---

type overviewData struct {
	Online, Offline int
	Machines        []*deskrun.Machine
	Queued          int
	Running         int
	Broken          []*deskrun.Connection
	Expiring        []*deskrun.Connection
	Failed          []*deskrun.Run
	Names           names
}

func (c *Console) overview(w http.ResponseWriter, r *req) error {
	ctx := r.Context()
	var d overviewData
	ms, err := c.svc.Machines(ctx)
	if err != nil {
		return err
	}
	d.Machines = ms
	for _, m := range ms {
		if m.State == deskrun.MachineOnline {
			d.Online++
		} else {
			d.Offline++
		}
	}
	if d.Queued, err = c.svc.CountRuns(ctx, store.RunFilter{States: []deskrun.RunState{deskrun.RunQueued}}); err != nil {
		return err
	}
	if d.Running, err = c.svc.CountRuns(ctx, store.RunFilter{States: []deskrun.RunState{deskrun.RunAssigned, deskrun.RunLoggingOn, deskrun.RunRunning}}); err != nil {
		return err
	}
	cs, err := c.svc.Connections(ctx)
	if err != nil {
		return err
	}
	for _, cn := range cs {
		switch cn.State {
		case deskrun.ConnectionBroken:
			d.Broken = append(d.Broken, cn)
		case deskrun.ConnectionExpiring:
			d.Expiring = append(d.Expiring, cn)
		}
	}
	if d.Failed, err = c.svc.ListRuns(ctx, store.RunFilter{States: []deskrun.RunState{deskrun.RunFailed, deskrun.RunTimedOut}, Limit: 10}); err != nil {
		return err
	}
	d.Names = namesOf(ms, cs)
	return c.page(w, http.StatusOK, "overview.html", c.view(r, "Overview", "overview", d))
}

// --- Machines ---

func (c *Console) machines(w http.ResponseWriter, r *req) error {
	ms, err := c.svc.Machines(r.Context())
	if err != nil {
		return err
	}
	return c.page(w, http.StatusOK, "machines.html", c.view(r, "Machines", "machines", ms))
}

type machineData struct {
	Machine *deskrun.Machine
	// DoctorProtocol is the first agent protocol that sends a doctor report.
	DoctorProtocol int
	Connections    []*deskrun.Connection
	Runs           []*deskrun.Run
	Names          names
}

func (c *Console) machine(w http.ResponseWriter, r *req) error {
	ctx := r.Context()
	m, err := c.svc.Machine(ctx, r.PathValue("machine"))
	if err != nil {
		return err
	}
	d := machineData{Machine: m, DoctorProtocol: wire.DoctorProtocolVersion}
	cs, err := c.svc.Connections(ctx)
	if err != nil {
		return err
	}
	for _, cn := range cs {
		if cn.Target == m.ID {
			d.Connections = append(d.Connections, cn)
		}
	}
	if d.Runs, err = c.svc.ListRuns(ctx, store.RunFilter{MachineID: m.ID, Limit: 20}); err != nil {
		return err
	}
	ms, err := c.svc.Machines(ctx)
	if err != nil {
		return err
	}
	d.Names = namesOf(ms, cs)
	return c.page(w, http.StatusOK, "machine.html", c.view(r, "Machine "+m.Name, "machines", d))
}

// --- Connections ---

type connectionsData struct {
	Connections []*deskrun.Connection
	Machines    []*deskrun.Machine
	Names       names
	Result      *connResult // the inline result of a create (no-JS path)
}

// connResult is the inline outcome of a create, update or test: the
// connection and the logon's identity, or the error and "nothing saved".
type connResult struct {
	Action     string // "create", "update", "test"
	Connection *deskrun.Connection
	Logon      *wire.ValidateOutput
	Error      *deskrun.Error
	Saved      bool
}

func (c *Console) connectionsData(ctx context.Context) (connectionsData, error) {
	var d connectionsData
	var err error
	if d.Connections, err = c.svc.Connections(ctx); err != nil {
		return d, err
	}
	if d.Machines, err = c.svc.Machines(ctx); err != nil {
		return d, err
	}
	d.Names = namesOf(d.Machines, d.Connections)
	return d, nil
}

func (c *Console) connections(w http.ResponseWriter, r *req) error {
	d, err := c.connectionsData(r.Context())
	if err != nil {
		return err
	}
	return c.page(w, http.StatusOK, "connections.html", c.view(r, "Connections", "connections", d))
}

// connOutcome turns a use case's answer into an inline result; an error
// that is not a *deskrun.Error stays an error (internal).
func connOutcome(action string, cn *deskrun.Connection, out *wire.ValidateOutput, err error, saved bool) (*connResult, error) {
	res := &connResult{Action: action, Connection: cn, Logon: out, Saved: saved && err == nil}
	if err != nil {
		de, ok := err.(*deskrun.Error)
		if !ok {
			return nil, err
		}
		res.Error = de
	}
	return res, nil
}

// showResult answers a connection form: to htmx, the result fragment and
// (out of band) the refreshed table; without JS, the whole page.
func (c *Console) showResult(w http.ResponseWriter, r *req, page string, res *connResult) error {
	status := http.StatusOK
	if res.Error != nil {
		status = api.StatusOf(res.Error.Code)
	}
	var v view
	if page == "connection.html" {
		cd, err := c.connectionData(r.Context(), res.Connection.Name)
		if err != nil {
			return err
		}
		cd.Result = res
		v = c.view(r, "Connection "+res.Connection.Name, "connections", cd)
	} else {
		d, err := c.connectionsData(r.Context())
		if err != nil {
			return err
		}
		d.Result = res
		v = c.view(r, "Connections", "connections", d)
	}
	if r.Header.Get("HX-Request") == "true" {
		return c.render(w, status, page, "conn-response", v)
	}
	return c.page(w, status, page, v)
}

// connFormPage is the page an update or test form was posted from.
func connFormPage(r *req) string {
	if r.PostFormValue("from") == "connection" {
		return "connection.html"
	}
	return "connections.html"
}

func (c *Console) createConnection(w http.ResponseWriter, r *req) error {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	req := wire.ConnectionCreate{Name: strings.TrimSpace(r.PostFormValue("name")), Machine: r.PostFormValue("machine"),
		Username: strings.TrimSpace(r.PostFormValue("username")), RunMode: r.PostFormValue("run_mode"),
		LogonType: r.PostFormValue("logon_type"), SkipTest: r.PostFormValue("skip_test") == "on"}
	if pw := r.PostFormValue("password"); pw != "" {
		req.Password = wire.Secret(pw)
	}
	cn, out, err := c.svc.CreateConnection(r.Context(), r.actor, req)
	if cn == nil {
		cn = &deskrun.Connection{Name: req.Name, Username: req.Username}
	}
	res, err := connOutcome("create", cn, out, err, true)
	if err != nil {
		return err
	}
	return c.showResult(w, r, "connections.html", res)
}

type connectionData struct {
	Connection *deskrun.Connection
	Machine    *deskrun.Machine
	Runs       []*deskrun.Run
	Result     *connResult
}

func (c *Console) connectionData(ctx context.Context, name string) (connectionData, error) {
	var d connectionData
	cn, err := c.svc.Connection(ctx, name)
	if err != nil {
		return d, err
	}
	d.Connection = cn
	if m, err := c.svc.Machine(ctx, cn.Target); err == nil {
		d.Machine = m
	}
	d.Runs, err = c.svc.ListRuns(ctx, store.RunFilter{ConnectionID: cn.ID, Limit: 10})
	return d, err
}

func (c *Console) connection(w http.ResponseWriter, r *req) error {
	d, err := c.connectionData(r.Context(), r.PathValue("connection"))
	if err != nil {
		return err
	}
	return c.page(w, http.StatusOK, "connection.html", c.view(r, "Connection "+d.Connection.Name, "connections", d))
}

func (c *Console) updateConnection(w http.ResponseWriter, r *req) error {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	req := wire.ConnectionUpdate{Username: strings.TrimSpace(r.PostFormValue("username")), RunMode: r.PostFormValue("run_mode"),
		LogonType: r.PostFormValue("logon_type")}
	if pw := r.PostFormValue("password"); pw != "" {
		req.Password = wire.Secret(pw)
	}
	cn, out, err := c.svc.UpdateConnection(r.Context(), r.actor, r.PathValue("connection"), req)
	if cn == nil {
		if cn, _ = c.svc.Connection(r.Context(), r.PathValue("connection")); cn == nil {
			return err
		}
	}
	res, err := connOutcome("update", cn, out, err, true)
	if err != nil {
		return err
	}
	return c.showResult(w, r, connFormPage(r), res)
}

func (c *Console) testConnection(w http.ResponseWriter, r *req) error {
	force := r.PostFormValue("force") == "on"
	cn, out, err := c.svc.TestConnection(r.Context(), r.actor, r.PathValue("connection"), force)
	if cn == nil {
		if cn, _ = c.svc.Connection(r.Context(), r.PathValue("connection")); cn == nil {
			return err
		}
	} else if fresh, ferr := c.svc.Connection(r.Context(), cn.ID); ferr == nil {
		cn = fresh
	}
	res, err := connOutcome("test", cn, out, err, false)
	if err != nil {
		return err
	}
	return c.showResult(w, r, connFormPage(r), res)
}

// --- Desktop flows ---

type flowRow struct {
	Flow     *deskrun.DesktopFlow
	Manifest desktopflow.Manifest
}

func manifestOf(f *deskrun.DesktopFlow) desktopflow.Manifest {
	var m desktopflow.Manifest
	_ = json.Unmarshal(f.Manifest, &m)
	return m
}

func (c *Console) desktopFlows(w http.ResponseWriter, r *req) error {
	fs, err := c.svc.DesktopFlows(r.Context())
	if err != nil {
		return err
	}
	rows := make([]flowRow, 0, len(fs))
	for _, f := range fs {
		rows = append(rows, flowRow{Flow: f, Manifest: manifestOf(f)})
	}
	return c.page(w, http.StatusOK, "flows.html", c.view(r, "Desktop flows", "flows", rows))
}

type flowData struct {
	Flow        *deskrun.DesktopFlow
	Manifest    desktopflow.Manifest
	Versions    []*deskrun.DesktopFlow
	Connections []*deskrun.Connection
	Runs        []*deskrun.Run
	Names       names
	Error       *deskrun.Error
}

func (c *Console) flowData(ctx context.Context, name string, version int) (flowData, error) {
	var d flowData
	var err error
	if d.Versions, err = c.svc.DesktopFlowVersions(ctx, name); err != nil {
		return d, err
	}
	if d.Flow, err = c.svc.DesktopFlow(ctx, name, version); err != nil {
		return d, err
	}
	d.Manifest = manifestOf(d.Flow)
	if d.Connections, err = c.svc.Connections(ctx); err != nil {
		return d, err
	}
	if d.Runs, err = c.svc.ListRuns(ctx, store.RunFilter{Flow: name, Limit: 10}); err != nil {
		return d, err
	}
	ms, err := c.svc.Machines(ctx)
	if err != nil {
		return d, err
	}
	d.Names = namesOf(ms, d.Connections)
	return d, nil
}

func (c *Console) desktopFlow(w http.ResponseWriter, r *req) error {
	version, _ := strconv.Atoi(r.URL.Query().Get("version"))
	d, err := c.flowData(r.Context(), r.PathValue("flow"), version)
	if err != nil {
		return err
	}
	return c.page(w, http.StatusOK, "flow.html", c.view(r, "Desktop flow "+d.Flow.Name, "flows", d))
}

func (c *Console) startRun(w http.ResponseWriter, r *req) error {
	r.Body = http.MaxBytesReader(w, r.Body, 256<<10)
	if err := r.ParseForm(); err != nil {
		return &deskrun.Error{Code: deskrun.CodeInvalid, Message: "the form could not be read"}
	}
	version, _ := strconv.Atoi(r.PostFormValue("version"))
	req := wire.RunCreate{Connection: r.PostFormValue("connection"), Version: version, Priority: r.PostFormValue("priority"),
		Screenshot: r.PostFormValue("screenshot") == "on", Inputs: map[string]string{}}
	for k, vs := range r.PostForm {
		if name, ok := strings.CutPrefix(k, "input."); ok && len(vs) > 0 && vs[0] != "" {
			req.Inputs[name] = vs[0]
		}
	}
	run, err := c.svc.StartRun(r.Context(), r.actor, r.PathValue("flow"), req)
	if err != nil {
		de, ok := err.(*deskrun.Error)
		if !ok {
			return err
		}
		d, derr := c.flowData(r.Context(), r.PathValue("flow"), version)
		if derr != nil {
			return err
		}
		d.Error = de
		return c.page(w, api.StatusOf(de.Code), "flow.html", c.view(r, "Desktop flow "+d.Flow.Name, "flows", d))
	}
	http.Redirect(w, r.Request, "/runs/"+run.ID, http.StatusSeeOther)
	return nil
}

// --- Runs ---

var runStates = []deskrun.RunState{deskrun.RunQueued, deskrun.RunAssigned, deskrun.RunLoggingOn, deskrun.RunRunning,
	deskrun.RunSucceeded, deskrun.RunFailed, deskrun.RunCancelled, deskrun.RunTimedOut}

type runsData struct {
	Runs     []*deskrun.Run
	Names    names
	States   []deskrun.RunState
	Flows    []*deskrun.DesktopFlow
	Machines []*deskrun.Machine
	State    string
	Flow     string
	Machine  string
}

func (c *Console) runs(w http.ResponseWriter, r *req) error {
	ctx := r.Context()
	q := r.URL.Query()
	d := runsData{States: runStates, State: q.Get("state"), Flow: q.Get("flow"), Machine: q.Get("machine")}
	f := store.RunFilter{Flow: d.Flow, Limit: 200}
	if d.State != "" {
		if !slices.Contains(runStates, deskrun.RunState(d.State)) {
			return &deskrun.Error{Code: deskrun.CodeInvalid, Field: "state", Message: fmt.Sprintf("unknown run state %q", d.State)}
		}
		f.States = []deskrun.RunState{deskrun.RunState(d.State)}
	}
	if d.Machine != "" {
		m, err := c.svc.Machine(ctx, d.Machine)
		if err != nil {
			return err
		}
		f.MachineID = m.ID
	}
	var err error
	if d.Runs, err = c.svc.ListRuns(ctx, f); err != nil {
		return err
	}
	if d.Flows, err = c.svc.DesktopFlows(ctx); err != nil {
		return err
	}
	if d.Machines, err = c.svc.Machines(ctx); err != nil {
		return err
	}
	cs, err := c.svc.Connections(ctx)
	if err != nil {
		return err
	}
	d.Names = namesOf(d.Machines, cs)
	return c.page(w, http.StatusOK, "runs.html", c.view(r, "Runs", "runs", d))
}

// step is one stage of a run's timeline.
type step struct {
	Name     string
	At       time.Time
	Duration string // from the agent's timings, when it measured the stage
	Done     bool
}

type runData struct {
	Run           *deskrun.Run
	Names         names
	Steps         []step
	Outputs       map[string]any
	Inputs        map[string]any
	HasScreenshot bool
	Log           string
	LastSeq       int64
}

func (c *Console) runData(ctx context.Context, id string, withLog bool) (runData, error) {
	run, err := c.svc.Run(ctx, id, 0)
	if err != nil {
		return runData{}, err
	}
	d := runData{Run: run}
	if d.Names, err = c.names(ctx); err != nil {
		return d, err
	}
	_ = json.Unmarshal(run.Outputs, &d.Outputs)
	_ = json.Unmarshal(run.Inputs, &d.Inputs)
	d.HasScreenshot = run.HasScreenshot
	var timings map[string]int64
	_ = json.Unmarshal(run.Timings, &timings)
	dur := func(key string) string {
		if us, ok := timings[key]; ok {
			return (time.Duration(us) * time.Microsecond).Round(time.Millisecond).String()
		}
		return ""
	}
	end := "finished"
	if run.State.Terminal() {
		end = string(run.State)
	}
	d.Steps = []step{
		{Name: "queued", At: run.CreatedAt, Done: true},
		{Name: "assigned", At: run.AssignedAt, Done: !run.AssignedAt.IsZero()},
		{Name: "logging on", At: run.LogonAt, Duration: dur("logon"), Done: !run.LogonAt.IsZero()},
		{Name: "running", At: run.StartedAt, Duration: dur("run"), Done: !run.StartedAt.IsZero()},
		{Name: end, At: run.FinishedAt, Done: !run.FinishedAt.IsZero()},
	}
	if withLog {
		var b strings.Builder
		after := int64(0)
		for {
			chunks, err := c.svc.RunLog(ctx, run.ID, after, 1000)
			if err != nil {
				return d, err
			}
			for _, ch := range chunks {
				b.Write(ch.Data)
				after = ch.Seq
			}
			if len(chunks) < 1000 || b.Len() > 4<<20 {
				break
			}
		}
		d.Log, d.LastSeq = b.String(), after
	}
	return d, nil
}

func (c *Console) run(w http.ResponseWriter, r *req) error {
	d, err := c.runData(r.Context(), r.PathValue("run"), true)
	if err != nil {
		return err
	}
	return c.page(w, http.StatusOK, "run.html", c.view(r, "Run "+d.Run.ID, "runs", d))
}

// runSummary is the fragment the run page reloads when the run changes.
func (c *Console) runSummary(w http.ResponseWriter, r *req) error {
	d, err := c.runData(r.Context(), r.PathValue("run"), false)
	if err != nil {
		return err
	}
	return c.render(w, http.StatusOK, "run.html", "run-summary", c.view(r, "", "runs", d))
}

func (c *Console) runScreenshot(w http.ResponseWriter, r *req) error {
	png, err := c.svc.RunScreenshot(r.Context(), r.PathValue("run"))
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "image/png")
	w.Header().Set("Cache-Control", "private, max-age=3600")
	_, err = w.Write(png)
	return err
}

func (c *Console) cancelRun(w http.ResponseWriter, r *req) error {
	if _, err := c.svc.CancelRun(r.Context(), r.PathValue("run")); err != nil {
		return err
	}
	http.Redirect(w, r.Request, "/runs/"+r.PathValue("run"), http.StatusSeeOther)
	return nil
}

// --- Error catalog and audit ---

type catalogEntry struct {
	identity.Entry
	Hex     string
	Decimal int64
}

type catalogData struct {
	Query   string
	Exact   bool
	Entries []catalogEntry
}

func (c *Console) catalog(w http.ResponseWriter, r *req) error {
	d := catalogData{Query: strings.TrimSpace(r.URL.Query().Get("q"))}
	var es []identity.Entry
	if d.Query == "" {
		es, d.Exact = identity.Catalog(), true
	} else {
		es, d.Exact = identity.Explain(d.Query)
	}
	for _, e := range es {
		d.Entries = append(d.Entries, catalogEntry{Entry: e, Hex: e.StatusHex(), Decimal: e.StatusDecimal()})
	}
	return c.page(w, http.StatusOK, "catalog.html", c.view(r, "Error catalog", "catalog", d))
}

type auditData struct {
	Events     []*deskrun.AuditEvent
	Action     string
	Connection string
}

func (c *Console) audit(w http.ResponseWriter, r *req) error {
	q := r.URL.Query()
	d := auditData{Action: q.Get("action"), Connection: q.Get("connection")}
	f := store.AuditFilter{Action: d.Action, Limit: 300}
	if d.Connection != "" {
		cn, err := c.svc.Connection(r.Context(), d.Connection)
		if err != nil {
			return err
		}
		f.ConnectionID = cn.ID
	}
	var err error
	if d.Events, err = c.svc.Audit(r.Context(), f); err != nil {
		return err
	}
	return c.page(w, http.StatusOK, "audit.html", c.view(r, "Audit log", "audit", d))
}
