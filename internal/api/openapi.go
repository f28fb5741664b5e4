package api

import (
	_ "embed"
	"net/http"
)

// openAPIDoc is the OpenAPI 3 description of /api/v1. A test validates
// real responses against it, so it cannot drift from what the server does.
//
//go:embed openapi.json
var openAPIDoc []byte

// OpenAPI returns the document.
func OpenAPI() []byte { return openAPIDoc }

func (a *API) openAPI(w http.ResponseWriter, _ *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	_, err := w.Write(openAPIDoc)
	return err
}
