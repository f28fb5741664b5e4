package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
)

// entryView is a catalog entry as explain prints it in JSON: the NTSTATUS
// in every form an admin may have in hand.
type entryView struct {
	identity.Entry
	Status         string `json:"status,omitempty"`
	StatusDecimal  int64  `json:"status_decimal,omitempty"`
	StatusUnsigned uint32 `json:"status_unsigned,omitempty"`
}

func viewOf(e identity.Entry) entryView {
	v := entryView{Entry: e}
	if e.Status != 0 {
		v.Status, v.StatusDecimal, v.StatusUnsigned = e.StatusHex(), e.StatusDecimal(), e.Status
	}
	return v
}

func newExplainCmd(a *app) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "explain CODE",
		Short: "Explain an error code: cause, codes and the command that fixes it",
		Long: `Look a code up in deskrun's failure catalog. CODE may be a reason or code name
(PasswordExpired, NoCandidateMachine), an NTSTATUS in hex (0xC000015B), signed
decimal (-1073741477) or unsigned decimal (3221225819), a Win32 error (1385), an AD
"data" code (52e), a PAM result (PAM_PERM_DENIED) or an NTSTATUS symbol.

An unknown code exits 1 and names the nearest entries.`,
		Example: `  deskrun explain -1073741477
  deskrun explain 0xC0000234
  deskrun explain "data 775"
  deskrun explain PAM_NEW_AUTHTOK_REQD --json`,
		// Flag parsing is off so that a signed decimal (-1073741477) is a
		// code, not a flag; --json and --help are recognised by hand.
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, argv []string) error {
			var args []string
			for i, s := range argv {
				switch {
				case s == "--json" || s == "--json=true":
					asJSON = true
				case s == "--json=false":
				case s == "-h" || s == "--help":
					return cmd.Help()
				case s == "--":
					args = append(args, argv[i+1:]...)
				case strings.HasPrefix(s, "--"):
					return usagef("unknown flag: %s", s)
				default:
					args = append(args, s)
					continue
				}
				if s == "--" {
					break
				}
			}
			if len(args) != 1 {
				return usagef("explain takes one CODE, got %d", len(args))
			}
			entries, exact := identity.Explain(args[0])
			if !exact {
				names := make([]string, 0, len(entries))
				for _, e := range entries {
					names = append(names, e.Reason)
				}
				return &deskrun.Error{Code: deskrun.CodeNotFound,
					Message:    fmt.Sprintf("%q is not in the catalog", args[0]),
					Resolution: "Nearest entries: " + strings.Join(names, ", ") + ". Run `deskrun explain NAME` for one of them; docs/identity.md lists every code."}
			}
			if asJSON {
				views := make([]entryView, 0, len(entries))
				for _, e := range entries {
					views = append(views, viewOf(e))
				}
				return printJSON(a.io.Out, map[string]any{"query": args[0], "entries": views})
			}
			for i, e := range entries {
				if i > 0 {
					fmt.Fprintln(a.io.Out)
				}
				printEntry(a.io.Out, e)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the entries as JSON")
	return c
}

func printEntry(w io.Writer, e identity.Entry) {
	fmt.Fprintf(w, "%s", e.Reason)
	if e.Code != e.Reason {
		fmt.Fprintf(w, " (code %s)", e.Code)
	}
	fmt.Fprintf(w, "\n  %s\n", e.Message)
	if e.Status != 0 {
		fmt.Fprintf(w, "  status:      %s  %d  (unsigned %d)", e.StatusHex(), e.StatusDecimal(), e.Status)
		if e.Symbol != "" {
			fmt.Fprintf(w, "  %s", e.Symbol)
		}
		fmt.Fprintln(w)
	}
	if e.Win32 != 0 {
		fmt.Fprintf(w, "  win32:       %d\n", e.Win32)
	}
	if e.ADData != "" {
		fmt.Fprintf(w, "  ad data:     %s\n", e.ADData)
	}
	if len(e.PAM) > 0 {
		fmt.Fprintf(w, "  pam:         %s\n", strings.Join(e.PAM, ", "))
	}
	if e.HTTP != 0 {
		fmt.Fprintf(w, "  http:        %d\n", e.HTTP)
	}
	yn := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	fmt.Fprintf(w, "  retryable:   %s   definitive: %s", yn(e.Retryable), yn(e.Definitive))
	if e.Schedulable {
		fmt.Fprint(w, "   schedulable: yes")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  fix:         %s\n", e.Resolution)
	if e.Windows != "" {
		fmt.Fprintf(w, "  on Windows:  %s\n", e.Windows)
	}
}
