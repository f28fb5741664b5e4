package api

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/store"
	"github.com/deskrun/deskrun/internal/wire"
)

func (a *API) runRoutes() {
	a.route("POST /api/v1/desktopflows/{flow}/runs", deskrun.RoleMaker, a.startRun)
	a.route("GET /api/v1/runs", deskrun.RoleViewer, a.listRuns)
	a.route("GET /api/v1/runs/{run}", deskrun.RoleViewer, a.getRun)
	a.route("GET /api/v1/runs/{run}/logs", deskrun.RoleViewer, a.runLogs)
	a.route("GET /api/v1/runs/{run}/screenshot", deskrun.RoleViewer, a.runScreenshot)
	a.route("POST /api/v1/runs/{run}/cancel", deskrun.RoleMaker, a.cancelRun)
	a.route("GET /api/v1/agent/packages/{digest}", "", a.agentPackage)
}

func (a *API) startRun(w http.ResponseWriter, r *http.Request) error {
	var req wire.RunCreate
	if err := decode(r, &req); err != nil {
		return err
	}
	wait, err := waitParam(r)
	if err != nil {
		return err
	}
	run, err := a.svc.StartRun(r.Context(), actor(r), r.PathValue("flow"), req)
	if err != nil {
		return err
	}
	if wait > 0 {
		if run, err = a.svc.Run(r.Context(), run.ID, wait); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusCreated, wire.RunFrom(run))
	return nil
}

func (a *API) listRuns(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := store.RunFilter{Flow: q.Get("flow")}
	if s := q.Get("state"); s != "" {
		f.States = []deskrun.RunState{deskrun.RunState(s)}
	}
	var err error
	if f.MachineID, err = a.machineParam(r); err != nil {
		return err
	}
	if f.ConnectionID, err = a.connectionParam(r); err != nil {
		return err
	}
	if f.Limit, err = limitParam(r); err != nil {
		return err
	}
	runs, err := a.svc.ListRuns(r.Context(), f)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.RunList{Runs: listOf(runs, wire.RunFrom)})
	return nil
}

func (a *API) getRun(w http.ResponseWriter, r *http.Request) error {
	wait, err := waitParam(r)
	if err != nil {
		return err
	}
	run, err := a.svc.Run(r.Context(), r.PathValue("run"), wait)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.RunFrom(run))
	return nil
}

func (a *API) cancelRun(w http.ResponseWriter, r *http.Request) error {
	run, err := a.svc.CancelRun(r.Context(), r.PathValue("run"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.RunFrom(run))
	return nil
}

func (a *API) runScreenshot(w http.ResponseWriter, r *http.Request) error {
	png, err := a.svc.RunScreenshot(r.Context(), r.PathValue("run"))
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "image/png")
	_, err = w.Write(png)
	return err
}

func logLine(c deskrun.LogChunk) wire.RunLogLine {
	return wire.RunLogLine{Seq: c.Seq, Stream: c.Stream, Data: string(c.Data), At: c.At}
}

// runLogs returns a run's output after ?after=SEQ. With ?follow=1 it
// streams newline-delimited JSON chunks (wire.RunLogLine) as they arrive,
// until the run ends and its output is drained.
func (a *API) runLogs(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("run")
	var after int64
	if s := r.URL.Query().Get("after"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return &deskrun.Error{Code: deskrun.CodeInvalid, Field: "after", Message: "after must be a chunk sequence number"}
		}
		after = n
	}
	run, err := a.svc.Run(r.Context(), id, 0)
	if err != nil {
		return err
	}
	if r.URL.Query().Get("follow") == "" {
		chunks, err := a.svc.RunLog(r.Context(), run.ID, after, 1000)
		if err != nil {
			return err
		}
		out := wire.RunLog{Chunks: make([]wire.RunLogLine, 0, len(chunks)), Next: after}
		for _, c := range chunks {
			out.Chunks = append(out.Chunks, logLine(c))
			out.Next = c.Seq
		}
		out.Done = run.State.Terminal() && len(chunks) < 1000
		writeJSON(w, http.StatusOK, out)
		return nil
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	for {
		changed, stop := a.svc.RunChanged(run.ID)
		chunks, err := a.svc.RunLog(r.Context(), run.ID, after, 1000)
		if err != nil {
			stop()
			return nil // headers are sent: end the stream
		}
		for _, c := range chunks {
			_ = enc.Encode(logLine(c))
			after = c.Seq
		}
		if flusher != nil {
			flusher.Flush()
		}
		if len(chunks) == 1000 {
			stop()
			continue
		}
		if cur, err := a.svc.Run(r.Context(), run.ID, 0); err != nil || cur.State.Terminal() {
			stop()
			// One more read: chunks stored between the read and the state.
			if more, err := a.svc.RunLog(r.Context(), run.ID, after, 1000); err == nil {
				for _, c := range more {
					_ = enc.Encode(logLine(c))
				}
			}
			return nil
		}
		select {
		case <-changed:
		case <-time.After(30 * time.Second): // keep proxies from timing out
		case <-r.Context().Done():
			stop()
			return nil
		}
		stop()
	}
}

// agentPackage serves a package to an agent that proves, by signing
// (machine, digest, time) with its Ed25519 key, that it is a machine with
// a run using that package.
func (a *API) agentPackage(w http.ResponseWriter, r *http.Request) error {
	digest := r.PathValue("digest")
	denied := &deskrun.Error{Code: deskrun.CodeAgentAuthFailed, Message: "the package request is not signed by an enrolled machine"}
	machineID := r.Header.Get("X-Deskrun-Machine")
	unix, err := strconv.ParseInt(r.Header.Get("X-Deskrun-Time"), 10, 64)
	if err != nil || machineID == "" {
		return denied
	}
	sig, err := base64.StdEncoding.DecodeString(r.Header.Get("X-Deskrun-Signature"))
	if err != nil {
		return denied
	}
	if d := time.Since(time.Unix(unix, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return &deskrun.Error{Code: deskrun.CodeAgentAuthFailed, Message: fmt.Sprintf("the request's time is %s away from the server's clock", d.Round(time.Second)),
			Resolution: "Synchronise the machine's clock (timedatectl set-ntp true)."}
	}
	m, err := a.svc.Store.GetMachine(r.Context(), machineID)
	if err != nil || len(m.SigningKey) != ed25519.PublicKeySize || !ed25519.Verify(m.SigningKey, wire.PackageAuthMessage(machineID, digest, unix), sig) {
		return denied
	}
	b, err := a.svc.PackageForMachine(r.Context(), m.ID, digest)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/gzip")
	_, err = w.Write(b)
	return err
}
