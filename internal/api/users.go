package api

import (
	"net/http"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/wire"
)

func (a *API) userRoutes() {
	a.route("POST /api/v1/users", deskrun.RoleAdmin, a.createUser)
}

func (a *API) createUser(w http.ResponseWriter, r *http.Request) error {
	var req wire.UserCreate
	if err := decode(r, &req); err != nil {
		return err
	}
	u, err := a.svc.CreateUser(r.Context(), req.Name, deskrun.Role(req.Role), req.Password)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, wire.User{Name: u.Name, Role: string(u.Role), CreatedAt: u.CreatedAt})
	return nil
}
