package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/desktopflow"
	"github.com/deskrun/deskrun/internal/wire"
)

// maxPackageBody is the body limit of POST /api/v1/desktopflows, which
// carries a package rather than JSON; every other route keeps
// Config.MaxBodyBytes.
const maxPackageBody = desktopflow.MaxPackageBytes

func (a *API) desktopFlowRoutes() {
	a.bodyLimit("POST /api/v1/desktopflows", maxPackageBody)
	a.route("POST /api/v1/desktopflows", deskrun.RoleMaker, a.pushDesktopFlow)
	a.route("GET /api/v1/desktopflows", deskrun.RoleViewer, a.listDesktopFlows)
	a.route("GET /api/v1/desktopflows/{flow}", deskrun.RoleViewer, a.getDesktopFlow)
	a.route("GET /api/v1/desktopflows/{flow}/versions/{version}", deskrun.RoleViewer, a.getDesktopFlowVersion)
	a.route("DELETE /api/v1/desktopflows/{flow}", deskrun.RoleMaker, a.deleteDesktopFlow)
}

var packageTooLarge = &deskrun.Error{Code: deskrun.CodeDesktopFlowPackageTooLarge,
	Message:    fmt.Sprintf("the package is over the limit of %d MiB compressed", maxPackageBody>>20),
	Resolution: "Leave large data out of the package; the flow can fetch it when it runs."}

// pushDesktopFlow reads the body as the package (application/gzip; the
// type is not checked, the bytes are).
func (a *API) pushDesktopFlow(w http.ResponseWriter, r *http.Request) error {
	if r.ContentLength > maxPackageBody {
		return packageTooLarge // refused before a byte of it is read
	}
	archive, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return packageTooLarge
		}
		return fmt.Errorf("read package: %w", err)
	}
	if len(archive) == 0 {
		return &deskrun.Error{Code: deskrun.CodeDesktopFlowPackageInvalid, Message: "the body is empty; it must be the package (tar.gz)",
			Resolution: "Push a directory with `deskrun desktopflow push DIR`."}
	}
	f, created, err := a.svc.PushDesktopFlow(r.Context(), actor(r), archive)
	if err != nil {
		return err
	}
	writeJSON(w, createdStatus(created), wire.DesktopFlowFrom(f))
	return nil
}

func (a *API) listDesktopFlows(w http.ResponseWriter, r *http.Request) error {
	fs, err := a.svc.DesktopFlows(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.DesktopFlowList{DesktopFlows: listOf(fs, wire.DesktopFlowFrom)})
	return nil
}

func (a *API) getDesktopFlow(w http.ResponseWriter, r *http.Request) error {
	vs, err := a.svc.DesktopFlowVersions(r.Context(), r.PathValue("flow"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.DesktopFlowDetailFrom(vs))
	return nil
}

func (a *API) getDesktopFlowVersion(w http.ResponseWriter, r *http.Request) error {
	v, err := parseVersion(r.PathValue("version"))
	if err != nil {
		return err
	}
	f, err := a.svc.DesktopFlow(r.Context(), r.PathValue("flow"), v)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.DesktopFlowFrom(f))
	return nil
}

func (a *API) deleteDesktopFlow(w http.ResponseWriter, r *http.Request) error {
	if err := a.svc.DeleteDesktopFlow(r.Context(), actor(r), r.PathValue("flow")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
