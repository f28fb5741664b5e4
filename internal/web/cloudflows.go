package web

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/api"
	"github.com/deskrun/deskrun/internal/flow"
	"github.com/deskrun/deskrun/internal/store"
)

// Cloud flows: the definitions applied with `deskrun flow apply`, their
// triggers, runs started from a form, and each run's step timeline.

// cloudFlow is a flow version with its parsed definition and what its
// triggers mean on this server.
type cloudFlow struct {
	Version    *deskrun.FlowVersion
	Def        *flow.Definition // nil when the stored text no longer parses
	DefError   string
	WebhookURL string
	NextTick   time.Time
}

func (c *Console) cloudFlow(fv *deskrun.FlowVersion, def *flow.Definition, err error) cloudFlow {
	cf := cloudFlow{Version: fv, Def: def}
	if err != nil {
		cf.DefError = err.Error()
	}
	if fv.HookID != "" {
		cf.WebhookURL = strings.TrimSuffix(c.svc.ServerURL, "/") + "/hooks/" + fv.HookID
	}
	if def != nil && def.Schedule() != nil {
		cf.NextTick = def.Schedule().Next(c.svc.Now())
	}
	return cf
}

func (c *Console) cloudFlows(w http.ResponseWriter, r *req) error {
	ctx := r.Context()
	fs, err := c.svc.ListFlows(ctx)
	if err != nil {
		return err
	}
	rows := make([]cloudFlow, 0, len(fs))
	for _, fv := range fs {
		def, err := c.svc.Definition(fv)
		rows = append(rows, c.cloudFlow(fv, def, err))
	}
	return c.page(w, http.StatusOK, "cloudflows.html", c.view(r, "Cloud flows", "cloudflows", rows))
}

// maxVersionsShown bounds the versions a flow's page lists.
const maxVersionsShown = 50

type cloudFlowData struct {
	cloudFlow
	Latest   int
	Versions []*deskrun.FlowVersion // newest first
	Runs     []*deskrun.FlowRun
	Form     map[string]string // the run form's values, kept after an error
	Error    *deskrun.Error
}

func (c *Console) cloudFlowData(ctx context.Context, name string, version int) (cloudFlowData, error) {
	var d cloudFlowData
	// Flow fails with the version when only its definition no longer
	// parses: the page shows that version and the error.
	latest, def, derr := c.svc.Flow(ctx, name, 0)
	if latest == nil {
		return d, derr
	}
	d.Latest = latest.Version
	fv := latest
	if version > 0 && version != latest.Version {
		if fv, def, derr = c.svc.Flow(ctx, name, version); fv == nil {
			return d, derr
		}
	}
	d.cloudFlow = c.cloudFlow(fv, def, derr)
	for v := latest.Version; v >= 1 && len(d.Versions) < maxVersionsShown; v-- {
		if v == latest.Version {
			d.Versions = append(d.Versions, latest)
			continue
		}
		old, err := c.svc.Store.GetFlowVersion(ctx, name, v)
		if deskrun.IsCode(err, deskrun.CodeNotFound) {
			continue
		} else if err != nil {
			return d, err
		}
		d.Versions = append(d.Versions, old)
	}
	var err error
	d.Runs, err = c.svc.ListFlowRuns(ctx, store.FlowRunFilter{Flow: name, Limit: 20})
	return d, err
}

func (c *Console) cloudFlowPage(w http.ResponseWriter, r *req) error {
	version, _ := strconv.Atoi(r.URL.Query().Get("version"))
	d, err := c.cloudFlowData(r.Context(), r.PathValue("flow"), version)
	if err != nil {
		return err
	}
	return c.page(w, http.StatusOK, "cloudflow.html", c.view(r, "Cloud flow "+d.Version.Name, "cloudflows", d))
}

// startFlowRun runs the latest version with the form's inputs. An empty
// field is left out, so the input's default applies; the values are
// strings, which the definition converts to the declared types.
func (c *Console) startFlowRun(w http.ResponseWriter, r *req) error {
	r.Body = http.MaxBytesReader(w, r.Body, 256<<10)
	if err := r.ParseForm(); err != nil {
		return &deskrun.Error{Code: deskrun.CodeInvalid, Message: "the form could not be read"}
	}
	name := r.PathValue("flow")
	inputs := map[string]any{}
	form := map[string]string{}
	for k, vs := range r.PostForm {
		if in, ok := strings.CutPrefix(k, "input."); ok && len(vs) > 0 {
			form[in] = vs[0]
			if vs[0] != "" {
				inputs[in] = vs[0]
			}
		}
	}
	run, err := c.svc.StartFlowRun(r.Context(), r.actor, name, inputs, map[string]any{"kind": "manual", "actor": r.actor.ID})
	if err != nil {
		de, ok := err.(*deskrun.Error)
		if !ok {
			return err
		}
		d, derr := c.cloudFlowData(r.Context(), name, 0)
		if derr != nil {
			return err
		}
		d.Error, d.Form = de, form
		return c.page(w, api.StatusOf(de.Code), "cloudflow.html", c.view(r, "Cloud flow "+d.Version.Name, "cloudflows", d))
	}
	http.Redirect(w, r.Request, "/flowruns/"+run.ID, http.StatusSeeOther)
	return nil
}

// flowStepView is one attempt of a step on a flow run's timeline.
type flowStepView struct {
	*deskrun.FlowStep
	Duration string
	Outputs  map[string]any
}

type flowRunData struct {
	Run      *deskrun.FlowRun
	Version  string // what the page shows, for the long poll
	Trigger  map[string]any
	Kind     string // the trigger's kind
	Inputs   map[string]any
	Outputs  map[string]any
	Steps    []flowStepView
	Duration string
	Pending  []string // the definition's steps that have no attempt yet
}

func duration(from, to time.Time) string {
	if from.IsZero() || to.IsZero() {
		return ""
	}
	d := to.Sub(from)
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(10 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func (c *Console) flowRunData(ctx context.Context, id string) (flowRunData, error) {
	run, steps, err := c.svc.FlowRun(ctx, id, 0)
	if err != nil {
		return flowRunData{}, err
	}
	d := flowRunData{Run: run, Duration: duration(run.StartedAt, run.FinishedAt)}
	// Version changes whenever what the page shows does: the run's state
	// and each step's state.
	d.Version = string(run.State)
	_ = json.Unmarshal(run.Trigger, &d.Trigger)
	if k, ok := d.Trigger["kind"].(string); ok {
		d.Kind = k
		delete(d.Trigger, "kind")
	}
	_ = json.Unmarshal(run.Inputs, &d.Inputs)
	_ = json.Unmarshal(run.Outputs, &d.Outputs)
	seen := map[string]bool{}
	for _, s := range steps {
		v := flowStepView{FlowStep: s, Duration: duration(s.StartedAt, s.FinishedAt)}
		d.Version += "." + string(s.State)
		_ = json.Unmarshal(s.Outputs, &v.Outputs)
		d.Steps = append(d.Steps, v)
		seen[s.StepID] = true
	}
	if !run.State.Terminal() {
		if _, def, err := c.svc.Flow(ctx, run.Flow, run.Version); err == nil {
			for _, s := range def.Steps {
				if !seen[s.ID] {
					d.Pending = append(d.Pending, s.ID)
				}
			}
		}
	}
	return d, nil
}

func (c *Console) flowRunPage(w http.ResponseWriter, r *req) error {
	d, err := c.flowRunData(r.Context(), r.PathValue("run"))
	if err != nil {
		return err
	}
	return c.page(w, http.StatusOK, "flowrun.html", c.view(r, "Flow run "+d.Run.ID, "cloudflows", d))
}

// flowRunSummary is the fragment the flow run page polls until the run
// is over.
// flowRunSummary answers the page's long poll: it returns when the run has
// changed since the version the page shows (?v=), or after a while, so a
// running flow's page follows it without polling on a timer.
func (c *Console) flowRunSummary(w http.ResponseWriter, r *req) error {
	id := r.PathValue("run")
	changed, stop := c.svc.RunChanged(id) // before the read: no change is missed
	defer stop()
	d, err := c.flowRunData(r.Context(), id)
	if err != nil {
		return err
	}
	if v := r.URL.Query().Get("v"); v != "" && v == d.Version && !d.Run.State.Terminal() {
		select {
		case <-changed:
		case <-time.After(flowRunPollWait):
		case <-r.Context().Done():
			return nil
		}
		if d, err = c.flowRunData(r.Context(), id); err != nil {
			return err
		}
	}
	return c.render(w, http.StatusOK, "flowrun.html", "flowrun-summary", c.view(r, "", "cloudflows", d))
}

// flowRunPollWait bounds one long poll of a running flow's page.
const flowRunPollWait = 25 * time.Second
