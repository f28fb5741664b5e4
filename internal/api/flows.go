package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/flow"
	"github.com/deskrun/deskrun/internal/store"
	"github.com/deskrun/deskrun/internal/wire"
)

func (a *API) flowRoutes() {
	a.route("GET /api/v1/schemas/flow.json", "", a.flowSchema)
	a.route("POST /api/v1/flows", deskrun.RoleMaker, a.applyFlow)
	a.bodyLimit("POST /api/v1/flows", flow.MaxDefinitionBytes*2)
	a.route("GET /api/v1/flows", deskrun.RoleViewer, a.listFlows)
	a.route("GET /api/v1/flows/{flow}", deskrun.RoleViewer, a.getFlow)
	a.route("DELETE /api/v1/flows/{flow}", deskrun.RoleMaker, a.deleteFlow)
	a.route("POST /api/v1/flows/{flow}/runs", deskrun.RoleMaker, a.startFlowRun)
	a.route("GET /api/v1/flowruns", deskrun.RoleViewer, a.listFlowRuns)
	a.route("GET /api/v1/flowruns/{run}", deskrun.RoleViewer, a.getFlowRun)
	a.route("PUT /api/v1/secrets/{name}", deskrun.RoleAdmin, a.setSecret)
	a.route("GET /api/v1/secrets", deskrun.RoleAdmin, a.listSecrets)
	a.route("DELETE /api/v1/secrets/{name}", deskrun.RoleAdmin, a.deleteSecret)
	// Webhooks authenticate by their signature, not a token.
	a.route("POST /hooks/{id}", "", a.webhook)
	a.bodyLimit("POST /hooks/{id}", a.svc.MaxWebhookBody())
}

func (a *API) flowSchema(w http.ResponseWriter, _ *http.Request) error {
	w.Header().Set("Content-Type", "application/schema+json")
	_, err := w.Write(flow.Schema)
	return err
}

func flowOut(fv *deskrun.FlowVersion, def *flow.Definition, withText bool) wire.Flow {
	out := wire.Flow{Name: fv.Name, Version: fv.Version, Digest: fv.Digest, HookID: fv.HookID, CreatedAt: fv.CreatedAt}
	if def != nil {
		out.Description = def.Description
		if s := def.Triggers.Schedule; s != nil {
			out.Schedule = s.Cron
			if s.Timezone != "" {
				out.Schedule += " (" + s.Timezone + ")"
			}
		}
		for _, s := range def.Steps {
			out.Steps = append(out.Steps, s.ID+":"+s.Kind())
		}
	}
	if withText {
		out.Definition = string(fv.Definition)
	}
	return out
}

func (a *API) applyFlow(w http.ResponseWriter, r *http.Request) error {
	var req wire.FlowApply
	if err := decode(r, &req); err != nil {
		return err
	}
	if req.File == "" {
		req.File = "flow.yaml"
	}
	fv, def, created, err := a.svc.ApplyFlow(r.Context(), actor(r), req.File, []byte(req.Definition))
	if err != nil {
		return err
	}
	out := flowOut(fv, def, false)
	out.Created = created
	writeJSON(w, createdStatus(created), out)
	return nil
}

func (a *API) listFlows(w http.ResponseWriter, r *http.Request) error {
	fs, err := a.svc.ListFlows(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.FlowList{Flows: listOf(fs, func(fv *deskrun.FlowVersion) wire.Flow {
		def, _ := a.svc.Definition(fv)
		return flowOut(fv, def, false)
	})})
	return nil
}

func (a *API) getFlow(w http.ResponseWriter, r *http.Request) error {
	version := 0 // the latest
	if s := r.URL.Query().Get("version"); s != "" {
		var err error
		if version, err = parseVersion(s); err != nil {
			return err
		}
	}
	fv, def, err := a.svc.Flow(r.Context(), r.PathValue("flow"), version)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, flowOut(fv, def, true))
	return nil
}

func (a *API) deleteFlow(w http.ResponseWriter, r *http.Request) error {
	if err := a.svc.DeleteFlow(r.Context(), r.PathValue("flow")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) startFlowRun(w http.ResponseWriter, r *http.Request) error {
	var req wire.FlowRunCreate
	if err := decode(r, &req); err != nil {
		return err
	}
	wait, err := waitParam(r)
	if err != nil {
		return err
	}
	run, err := a.svc.StartFlowRun(r.Context(), actor(r), r.PathValue("flow"), req.Inputs, map[string]any{"kind": "api", "actor": actor(r).ID})
	if err != nil {
		return err
	}
	run2, steps, err := a.svc.FlowRun(r.Context(), run.ID, wait)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, wire.FlowRunFrom(run2, steps))
	return nil
}

func (a *API) getFlowRun(w http.ResponseWriter, r *http.Request) error {
	wait, err := waitParam(r)
	if err != nil {
		return err
	}
	run, steps, err := a.svc.FlowRun(r.Context(), r.PathValue("run"), wait)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.FlowRunFrom(run, steps))
	return nil
}

func (a *API) listFlowRuns(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := store.FlowRunFilter{Flow: q.Get("flow")}
	if s := q.Get("state"); s != "" {
		f.States = []deskrun.FlowRunState{deskrun.FlowRunState(s)}
	}
	var err error
	if f.Limit, err = limitParam(r); err != nil {
		return err
	}
	runs, err := a.svc.ListFlowRuns(r.Context(), f)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.FlowRunList{Runs: listOf(runs, func(run *deskrun.FlowRun) wire.FlowRun {
		return wire.FlowRunFrom(run, nil)
	})})
	return nil
}

func (a *API) setSecret(w http.ResponseWriter, r *http.Request) error {
	var req wire.SecretSet
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := a.svc.SetSecret(r.Context(), actor(r), r.PathValue("name"), []byte(req.Value)); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) listSecrets(w http.ResponseWriter, r *http.Request) error {
	list, err := a.svc.ListSecrets(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.SecretList{Secrets: listOf(list, func(s deskrun.Secret) wire.SecretInfo {
		return wire.SecretInfo{Name: s.Name, UpdatedAt: s.UpdatedAt} // never the value
	})})
	return nil
}

func (a *API) deleteSecret(w http.ResponseWriter, r *http.Request) error {
	if err := a.svc.DeleteSecret(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) webhook(w http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &deskrun.Error{Code: deskrun.CodeBodyTooLarge, Message: fmt.Sprintf("the webhook body is over the limit of %d bytes", mbe.Limit)}
		}
		return err
	}
	run, created, err := a.svc.Webhook(r.Context(), r.PathValue("id"), r.Header, body)
	if err != nil {
		return err
	}
	status := http.StatusAccepted
	if !created {
		status = http.StatusOK
	}
	writeJSON(w, status, wire.FlowRunFrom(run, nil))
	return nil
}
