package control

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/desktopflow"
)

// PushDesktopFlow stores a package pushed by a maker as the next version
// of the flow its manifest names. Nothing the client says is trusted: the
// digest is computed here and the archive is inspected whole (every entry,
// the limits, the manifest) before anything is stored. It returns the
// version and whether it is new: the content of the latest version again
// makes no new version.
func (s *Service) PushDesktopFlow(ctx context.Context, actor Actor, archive []byte) (*deskrun.DesktopFlow, bool, error) {
	m, err := desktopflow.Inspect(archive)
	if err != nil {
		return nil, false, err
	}
	manifest, err := json.Marshal(m)
	if err != nil {
		return nil, false, fmt.Errorf("encode manifest: %w", err)
	}
	f := &deskrun.DesktopFlow{Name: m.Name, Digest: desktopflow.Digest(archive), Manifest: manifest,
		CreatedAt: s.now(), CreatedBy: actor.ID}
	created, err := s.Store.CreateDesktopFlowVersion(ctx, f, archive)
	if err != nil {
		return nil, false, err
	}
	if created {
		s.Log.Info("desktop flow pushed", "flow", f.Name, "version", f.Version, "digest", f.Digest, "size", f.Size, "actor", actor.ID)
	}
	return f, created, nil
}

// DesktopFlows lists the latest version of every flow.
func (s *Service) DesktopFlows(ctx context.Context) ([]*deskrun.DesktopFlow, error) {
	return s.Store.ListDesktopFlows(ctx)
}

// DesktopFlow returns a version of a flow (0: the latest).
func (s *Service) DesktopFlow(ctx context.Context, name string, version int) (*deskrun.DesktopFlow, error) {
	if version < 0 {
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "version", Message: "a version is a number from 1"}
	}
	f, err := s.Store.GetDesktopFlow(ctx, name, version)
	return f, notFoundFlow(err, name)
}

// DesktopFlowVersions returns every version of a flow, newest first.
func (s *Service) DesktopFlowVersions(ctx context.Context, name string) ([]*deskrun.DesktopFlow, error) {
	fs, err := s.Store.ListDesktopFlowVersions(ctx, name)
	return fs, notFoundFlow(err, name)
}

// DeleteDesktopFlow deletes every version of a flow and the packages no
// other flow uses.
func (s *Service) DeleteDesktopFlow(ctx context.Context, actor Actor, name string) error {
	if err := s.Store.DeleteDesktopFlow(ctx, name); err != nil {
		return notFoundFlow(err, name)
	}
	s.Log.Info("desktop flow deleted", "flow", name, "actor", actor.ID)
	return nil
}

// notFoundFlow adds the way to find flows to a NotFound error.
func notFoundFlow(err error, name string) error {
	if de, ok := err.(*deskrun.Error); ok && de.Code == deskrun.CodeNotFound && de.Resolution == "" {
		out := *de
		out.Resolution = "List desktop flows with `deskrun desktopflow list`; push one with `deskrun desktopflow push DIR`."
		return &out
	}
	return err
}
