package identity_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/identity"
)

var update = flag.Bool("update", false, "rewrite the catalog table in docs/identity.md")

const (
	beginMark = "<!-- catalog:begin (generated: go test ./internal/identity -run TestDocs -update) -->"
	endMark   = "<!-- catalog:end -->"
)

// TestDocs keeps the catalog table of docs/identity.md equal to Catalog().
func TestDocs(t *testing.T) {
	path := filepath.Join("..", "..", "docs", "identity.md")
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	doc := string(b)
	i, j := strings.Index(doc, beginMark), strings.Index(doc, endMark)
	require.True(t, i >= 0 && j > i, "markers missing in docs/identity.md")
	want := doc[:i+len(beginMark)] + "\n" + catalogTable() + doc[j:]
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(want), 0o644))
		return
	}
	require.Equal(t, want, doc, "docs/identity.md is stale: go test ./internal/identity -run TestDocs -update")
}

func catalogTable() string {
	cell := func(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "|", `\|`), "\n", " ") }
	var b strings.Builder
	cat := ""
	for _, e := range identity.Catalog() {
		if e.Category != cat {
			cat = e.Category
			fmt.Fprintf(&b, "\n### %s\n\n", cat)
			b.WriteString("| reason | code | NTSTATUS | signed | Win32 | AD data | PAM | retry / definitive | message | resolution (Linux) | Windows |\n")
			b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
		}
		st, dec, w32 := "", "", ""
		if e.Status != 0 {
			st, dec = e.StatusHex(), fmt.Sprint(e.StatusDecimal())
		}
		if e.Win32 != 0 {
			w32 = fmt.Sprint(e.Win32)
		}
		flags := []string{}
		if e.Retryable {
			flags = append(flags, "retryable")
		}
		if e.Definitive {
			flags = append(flags, "**definitive**")
		}
		if e.Schedulable {
			flags = append(flags, "schedulable")
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			e.Reason, e.Code, st, dec, w32, e.ADData, strings.Join(e.PAM, ", "), strings.Join(flags, ", "),
			cell(e.Message), cell(e.Resolution), cell(e.Windows))
	}
	b.WriteString("\n")
	return b.String()
}
