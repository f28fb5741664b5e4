package deskrun_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDomainImportsOnlyStdlib keeps the house rule of docs/architecture.md:
// the domain (this package, internal/identity, internal/seal) and the wire
// shapes import only the standard library and each other, never the store
// or any adapter.
func TestDomainImportsOnlyStdlib(t *testing.T) {
	t.Parallel()
	const mod = "github.com/deskrun/deskrun"
	allowedOwn := map[string]bool{mod: true, mod + "/internal/identity": true, mod + "/internal/seal": true, mod + "/internal/wire": true}
	for _, pkg := range []string{".", "./internal/identity", "./internal/seal", "./internal/wire"} {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if !allowedOwn[dep] {
				t.Errorf("%s imports %s: domain and wire packages may import only the standard library and the domain", pkg, dep)
			}
		}
	}
}
