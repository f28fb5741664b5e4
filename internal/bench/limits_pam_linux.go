//go:build linux && cgo

package bench

import (
	"fmt"
	"path/filepath"

	msteinert "github.com/msteinert/pam/v2"

	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/pam"
)

// rawPAM installs deskrun's PAM services in dir, as the desktop scenarios
// do, and returns a raw logon through the interactive one: what
// internal/identity/pam's BenchmarkLogon calls raw, without the
// provider's checks, lookups and mapping around it.
func rawPAM(dir string) (logon func(user, password string) error, skipped string, err error) {
	stack := pam.Stack{
		PAMDir: filepath.Join(dir, "pam.d"), ConfigDir: filepath.Join(dir, "conf"),
		FaillockDir: filepath.Join(dir, "faillock"), NologinFile: filepath.Join(dir, "nologin"),
		Deny: 5, UnlockTime: 600,
	}
	if _, err := pam.Install(stack); err != nil {
		return nil, "", fmt.Errorf("install the PAM stack: %w", err)
	}
	svc := pam.ServiceName(identity.LogonInteractive)
	return func(user, password string) error {
		conv := msteinert.ConversationFunc(func(s msteinert.Style, _ string) (string, error) {
			if s == msteinert.PromptEchoOff {
				return password, nil
			}
			return "", nil
		})
		tx, err := msteinert.StartConfDir(svc, user, conv, stack.PAMDir)
		if err != nil {
			return err
		}
		defer tx.End()
		if err := tx.Authenticate(msteinert.DisallowNullAuthtok); err != nil {
			return fmt.Errorf("pam authenticate %s: %w", user, err)
		}
		if err := tx.AcctMgmt(msteinert.DisallowNullAuthtok); err != nil {
			return fmt.Errorf("pam acct_mgmt %s: %w", user, err)
		}
		return nil
	}, "", nil
}
