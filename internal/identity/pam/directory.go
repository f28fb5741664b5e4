package pam

import (
	"context"
	"errors"
	"strings"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
)

// AccountStater reads a directory account's state without its password.
// pam_sss answers PAM_PERM_DENIED alike for a disabled, expired or locked
// account, one outside its logon hours, and one SSSD cannot check offline
// without cached credentials; with an AccountStater in Config.Directory
// the provider asks the directory which it is. *ldap.Provider (with its
// read-only service account) is one.
type AccountStater interface {
	// AccountStatus returns nil when nothing in the account forbids a
	// logon; a *deskrun.Error built by identity.Fail whose Reason says
	// what does (AccountDisabled, AccountExpired, AccountLockedOut,
	// InvalidLogonHours, SmartCardRequired, PasswordExpired,
	// PasswordMustChange), NoSuchUser when the directory has no such
	// account, NoLogonServers when it cannot be reached; any other error
	// when it cannot tell.
	AccountStatus(ctx context.Context, name identity.Name) error
}

// directoryStack reports whether directory accounts reach this stack
// through SSSD: the stack renders pam_sss, or the machine is joined with
// SSSD (the agent builds its stack from flags, without Directory).
func (p *Provider) directoryStack() bool {
	return p.cfg.Stack.Directory == "sss" || p.cfg.Join.State == deskrun.JoinSSSD
}

// directoryName is the directory name of a user pam_sss judged: a domain
// form as typed; a bare name that is not in the shadow file (so not a
// local account) in the joined domain. ok is false for local accounts.
func (p *Provider) directoryName(name identity.Name, pamUser string) (identity.Name, bool) {
	if name.IsDomainForm(p.cfg.Hostname) {
		return name, true
	}
	if name.Kind == identity.KindBare && p.cfg.Join.Domain != "" && !readShadow(p.cfg.ShadowFile, pamUser).found {
		raw := name.User + "@" + p.cfg.Join.Domain
		return identity.Name{Kind: identity.KindUPN, User: name.User, Domain: p.cfg.Join.Domain, Raw: raw}, true
	}
	return identity.Name{}, false
}

// askDirectory asks Config.Directory about a directory account PAM
// refused. It returns the directory's error when it names a reason, and
// otherwise nil with a line of evidence for the caller's detail.
func (p *Provider) askDirectory(ctx context.Context, name identity.Name, pamUser string) (*deskrun.Error, string) {
	if p.cfg.Directory == nil || !p.directoryStack() {
		return nil, ""
	}
	dn, ok := p.directoryName(name, pamUser)
	if !ok {
		return nil, ""
	}
	err := p.cfg.Directory.AccountStatus(ctx, dn)
	var de *deskrun.Error
	switch {
	case err == nil:
		return nil, "directory: nothing in " + dn.String() + " forbids a logon"
	case errors.As(err, &de) && de.Reason != "":
		return de, ""
	}
	return nil, "directory: " + err.Error()
}

// fromDirectory is the error of a PAM failure the directory explained:
// the directory's reason, PAM's raw result, both sides in the detail.
func (p *Provider) fromDirectory(de *deskrun.Error, pr *deskrun.ProviderResult, msgs []string) *deskrun.Error {
	detail := append([]string{}, msgs...)
	if d := de.Provider; d != nil {
		s := "directory (" + d.Name + " " + d.Stage + "): " + d.Result
		if d.Detail != "" {
			s += ": " + d.Detail
		}
		detail = append(detail, s)
	}
	pr.Detail = strings.Join(detail, "; ")
	e := identity.Machine(p.cfg.Machine).Fail(de.Reason, pr)
	if de.Reason == identity.ReasonNoLogonServers {
		e.Message = "PAM (SSSD) refused the logon, and the directory cannot be reached to say why: SSSD has no cached credentials for this user while the domain is offline."
	}
	return e
}
