package sqlite

import (
	"context"
	"database/sql"
	"errors"

	"github.com/deskrun/deskrun"
)

const desktopFlowColumns = `name, version, digest, manifest, size, created_at, created_by`

func scanDesktopFlow(s scanner) (*deskrun.DesktopFlow, error) {
	var (
		f        deskrun.DesktopFlow
		manifest string
		created  int64
	)
	if err := s.Scan(&f.Name, &f.Version, &f.Digest, &manifest, &f.Size, &created, &f.CreatedBy); err != nil {
		return nil, err
	}
	f.Manifest = nonEmpty([]byte(manifest))
	f.CreatedAt = fromNanos(created)
	return &f, nil
}

// CreateDesktopFlowVersion stores the package (once per digest) and the
// next version of the flow, in one transaction, so two pushes of one flow
// cannot take the same version number.
func (q *queries) CreateDesktopFlowVersion(ctx context.Context, f *deskrun.DesktopFlow, archive []byte) (bool, error) {
	s := subject{op: "create desktop flow version", kind: "desktop flow", name: f.Name}
	if f.Name == "" || f.Digest == "" || len(archive) == 0 {
		return false, deskrun.Errorf(deskrun.CodeInvalid, "a desktop flow version needs a name, a digest and a package")
	}
	created := false
	err := q.atomic(ctx, func(q *queries) error {
		latest, err := scanDesktopFlow(q.r.QueryRowContext(ctx, `SELECT `+desktopFlowColumns+` FROM desktop_flows
			WHERE name = ? ORDER BY version DESC LIMIT 1`, f.Name))
		switch {
		case err == nil && latest.Digest == f.Digest:
			*f = *latest
			return nil
		case err == nil:
			f.Version = latest.Version + 1
		case errors.Is(err, sql.ErrNoRows):
			f.Version = 1
		default:
			return err
		}
		if _, err := q.w.ExecContext(ctx, `INSERT INTO packages (digest, data, size, created_at) VALUES (?, ?, ?, ?)
			ON CONFLICT (digest) DO NOTHING`, f.Digest, archive, len(archive), nanos(f.CreatedAt)); err != nil {
			return err
		}
		f.Size = int64(len(archive))
		if _, err := q.w.ExecContext(ctx, `INSERT INTO desktop_flows (`+desktopFlowColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			f.Name, f.Version, f.Digest, string(f.Manifest), f.Size, nanos(f.CreatedAt), f.CreatedBy); err != nil {
			return err
		}
		created = true
		return nil
	})
	if err != nil {
		return false, interpretError(err, s)
	}
	return created, nil
}

func (q *queries) GetDesktopFlow(ctx context.Context, name string, version int) (*deskrun.DesktopFlow, error) {
	var row *sql.Row
	if version == 0 {
		row = q.r.QueryRowContext(ctx, `SELECT `+desktopFlowColumns+` FROM desktop_flows
			WHERE name = ? ORDER BY version DESC LIMIT 1`, name)
	} else {
		row = q.r.QueryRowContext(ctx, `SELECT `+desktopFlowColumns+` FROM desktop_flows
			WHERE name = ? AND version = ?`, name, version)
	}
	f, err := scanDesktopFlow(row)
	if errors.Is(err, sql.ErrNoRows) && version != 0 {
		if _, err := q.GetDesktopFlow(ctx, name, 0); err != nil {
			return nil, err // no such flow at all
		}
		return nil, deskrun.Errorf(deskrun.CodeNotFound, "desktop flow %q has no version %d", name, version)
	}
	if err != nil {
		return nil, interpretError(err, subject{op: "get desktop flow", kind: "desktop flow", name: name})
	}
	return f, nil
}

// ListDesktopFlows returns the latest version of each flow, by name.
func (q *queries) ListDesktopFlows(ctx context.Context) ([]*deskrun.DesktopFlow, error) {
	fs, err := queryAll(ctx, q.r, scanDesktopFlow, `SELECT `+desktopFlowColumns+` FROM desktop_flows d
		WHERE version = (SELECT MAX(version) FROM desktop_flows WHERE name = d.name) ORDER BY name`)
	if err != nil {
		return nil, interpretError(err, subject{op: "list desktop flows"})
	}
	return fs, nil
}

// ListDesktopFlowVersions returns a flow's versions, newest first.
func (q *queries) ListDesktopFlowVersions(ctx context.Context, name string) ([]*deskrun.DesktopFlow, error) {
	fs, err := queryAll(ctx, q.r, scanDesktopFlow, `SELECT `+desktopFlowColumns+` FROM desktop_flows
		WHERE name = ? ORDER BY version DESC`, name)
	if err == nil && len(fs) == 0 {
		err = sql.ErrNoRows
	}
	if err != nil {
		return nil, interpretError(err, subject{op: "list desktop flow versions", kind: "desktop flow", name: name})
	}
	return fs, nil
}

func (q *queries) GetPackage(ctx context.Context, digest string) ([]byte, error) {
	var data []byte
	err := q.r.QueryRowContext(ctx, `SELECT data FROM packages WHERE digest = ?`, digest).Scan(&data)
	if err != nil {
		return nil, interpretError(err, subject{op: "get package", kind: "package", id: digest})
	}
	return data, nil
}

// DeleteDesktopFlow deletes a flow's versions, then those of their
// packages that no other version uses, in one transaction.
func (q *queries) DeleteDesktopFlow(ctx context.Context, name string) error {
	s := subject{op: "delete desktop flow", kind: "desktop flow", name: name}
	err := q.atomic(ctx, func(q *queries) error {
		res, err := q.w.ExecContext(ctx, `DELETE FROM desktop_flows WHERE name = ?`, name)
		if err := mustAffect(res, err, s); err != nil {
			return err
		}
		_, err = q.w.ExecContext(ctx, `DELETE FROM packages
			WHERE NOT EXISTS (SELECT 1 FROM desktop_flows d WHERE d.digest = packages.digest)`)
		return err
	})
	if err != nil {
		return interpretError(err, s)
	}
	return nil
}
