package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun/internal/wire"
)

func newUserCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "user", Short: "Create web console users"}
	var req wire.UserCreate
	var passwordStdin bool
	create := &cobra.Command{
		Use:     "create NAME --role ROLE",
		Short:   "Create a console user (admin, maker or viewer); the server keeps an argon2id hash of the password",
		Example: `  printf '%s' "$PW" | deskrun user create alice --role maker --password-stdin`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			pw, err := readPassword(a, passwordStdin, req.Name)
			if err != nil {
				return err
			}
			req.Password = wire.Secret(pw)
			defer clear(pw)
			cl, err := a.client()
			if err != nil {
				return err
			}
			u, err := cl.CreateUser(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.io.Out, "user %s created (%s)\n", u.Name, u.Role)
			return nil
		},
	}
	f := create.Flags()
	f.StringVar(&req.Role, "role", "viewer", "admin, maker or viewer")
	f.BoolVar(&passwordStdin, "password-stdin", false, "read the password from stdin (else prompt without echo)")
	c.AddCommand(create)
	return c
}
