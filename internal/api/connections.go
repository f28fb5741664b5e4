package api

import (
	"context"
	"net/http"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/store"
	"github.com/deskrun/deskrun/internal/wire"
)

// connectionOut converts one connection, naming its machine. A list
// names them from one read of the machines (listConnections).
func (a *API) connectionOut(ctx context.Context, c *deskrun.Connection) wire.Connection {
	name := ""
	if m, err := a.svc.Machine(ctx, c.Target); err == nil {
		name = m.Name
	}
	return wire.ConnectionFrom(c, name)
}

func (a *API) createConnection(w http.ResponseWriter, r *http.Request) error {
	var req wire.ConnectionCreate
	if err := decode(r, &req); err != nil {
		return err
	}
	c, out, err := a.svc.CreateConnection(r.Context(), actor(r), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, wire.ConnectionTestResult{Connection: a.connectionOut(r.Context(), c), Logon: out})
	return nil
}

func (a *API) listConnections(w http.ResponseWriter, r *http.Request) error {
	cs, err := a.svc.Connections(r.Context())
	if err != nil {
		return err
	}
	ms, err := a.svc.Machines(r.Context())
	if err != nil {
		return err
	}
	machineName := make(map[string]string, len(ms))
	for _, m := range ms {
		machineName[m.ID] = m.Name
	}
	writeJSON(w, http.StatusOK, wire.ConnectionList{Connections: listOf(cs, func(c *deskrun.Connection) wire.Connection {
		return wire.ConnectionFrom(c, machineName[c.Target])
	})})
	return nil
}

func (a *API) getConnection(w http.ResponseWriter, r *http.Request) error {
	c, err := a.svc.Connection(r.Context(), r.PathValue("connection"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, a.connectionOut(r.Context(), c))
	return nil
}

func (a *API) updateConnection(w http.ResponseWriter, r *http.Request) error {
	var req wire.ConnectionUpdate
	if err := decode(r, &req); err != nil {
		return err
	}
	c, out, err := a.svc.UpdateConnection(r.Context(), actor(r), r.PathValue("connection"), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.ConnectionTestResult{Connection: a.connectionOut(r.Context(), c), Logon: out})
	return nil
}

func (a *API) deleteConnection(w http.ResponseWriter, r *http.Request) error {
	if err := a.svc.DeleteConnection(r.Context(), actor(r), r.PathValue("connection")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) testConnection(w http.ResponseWriter, r *http.Request) error {
	var req wire.ConnectionTest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			return err
		}
	}
	c, out, err := a.svc.TestConnection(r.Context(), actor(r), r.PathValue("connection"), req.Force)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.ConnectionTestResult{Connection: a.connectionOut(r.Context(), c), Logon: out})
	return nil
}

func (a *API) listAudit(w http.ResponseWriter, r *http.Request) error {
	f := store.AuditFilter{Action: r.URL.Query().Get("action")}
	var err error
	if f.ConnectionID, err = a.connectionParam(r); err != nil {
		return err
	}
	if f.Limit, err = limitParam(r); err != nil {
		return err
	}
	es, err := a.svc.Audit(r.Context(), f)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.AuditList{Events: listOf(es, wire.AuditFrom)})
	return nil
}
