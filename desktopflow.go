package deskrun

import (
	"encoding/json"
	"time"
)

// DesktopFlow is one version of a desktop flow: the package a maker pushed
// (stored once per digest) and its manifest. Versions of a name count up
// from 1; pushing the content of the latest version again makes no new
// version.
type DesktopFlow struct {
	Name    string
	Version int
	// Digest is the content address of the package: "sha256:" and the hex
	// SHA-256 of the archive's bytes.
	Digest string
	// Manifest is the package's desktopflow.yaml as JSON, parsed and
	// checked by the server when the package was pushed.
	Manifest  json.RawMessage
	Size      int64 // bytes of the compressed archive
	CreatedAt time.Time
	CreatedBy string // the actor that pushed it: "token:t_…"
}
