package wire

import (
	"encoding/json"
	"time"

	"github.com/deskrun/deskrun"
)

// DesktopFlow is one version of a desktop flow as the API shows it; the
// answer of POST /api/v1/desktopflows (201 when the version is new, 200
// when the package is the latest version's) and of GET
// /api/v1/desktopflows/{name}/versions/{version}.
type DesktopFlow struct {
	Name    string `json:"name"`
	Version int    `json:"version"`
	Digest  string `json:"digest"`
	Size    int64  `json:"size"`
	// Manifest is the desktopflow.yaml of the package as the server parsed
	// it (desktopflow.Manifest in JSON).
	Manifest  json.RawMessage `json:"manifest"`
	CreatedAt time.Time       `json:"created_at"`
	CreatedBy string          `json:"created_by,omitempty"`
}

// DesktopFlowFrom converts a stored version.
func DesktopFlowFrom(f *deskrun.DesktopFlow) DesktopFlow {
	return DesktopFlow{Name: f.Name, Version: f.Version, Digest: f.Digest, Size: f.Size,
		Manifest: f.Manifest, CreatedAt: f.CreatedAt, CreatedBy: f.CreatedBy}
}

// DesktopFlowList is the answer of GET /api/v1/desktopflows: the latest
// version of every flow.
type DesktopFlowList struct {
	DesktopFlows []DesktopFlow `json:"desktop_flows"`
}

// DesktopFlowVersion names one version without its manifest.
type DesktopFlowVersion struct {
	Version   int       `json:"version"`
	Digest    string    `json:"digest"`
	Size      int64     `json:"size"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by,omitempty"`
}

// DesktopFlowDetail is the answer of GET /api/v1/desktopflows/{name}: the
// latest version and every version, newest first.
type DesktopFlowDetail struct {
	Latest   DesktopFlow          `json:"latest"`
	Versions []DesktopFlowVersion `json:"versions"`
}

// DesktopFlowDetailFrom converts a flow's versions, newest first.
func DesktopFlowDetailFrom(versions []*deskrun.DesktopFlow) DesktopFlowDetail {
	out := DesktopFlowDetail{Versions: make([]DesktopFlowVersion, 0, len(versions))}
	if len(versions) > 0 {
		out.Latest = DesktopFlowFrom(versions[0])
	}
	for _, f := range versions {
		out.Versions = append(out.Versions, DesktopFlowVersion{Version: f.Version, Digest: f.Digest, Size: f.Size,
			CreatedAt: f.CreatedAt, CreatedBy: f.CreatedBy})
	}
	return out
}
