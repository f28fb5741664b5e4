// Package ldap checks domain credentials with an LDAP simple bind against
// Active Directory (or Samba AD) and OpenLDAP, and explains every refusal:
// AD's "data XXX" sub-codes and OpenLDAP's password-policy control become
// identity reasons with their NTSTATUS.
//
// With a read-only service account it also reads the account's state
// before binding, which buys three things a bind alone cannot give: the
// lockout guard (no bind when one more failure would lock the account),
// SmartCardRequired (Samba answers 52e for such accounts, as their
// password is random), and NoSuchUser (Samba answers 52e for unknown
// names too).
//
// Names: user@domain (UPN) and DOMAIN\user are bound as typed, which AD
// accepts. Bare ("alice") and local (".\alice") names are refused before
// any network call: they name local accounts (identity.Name.LocalTo),
// which the PAM provider checks. Directories that bind DNs only (OpenLDAP
// answers 34 invalid DN syntax) get the DN found with the service account.
package ldap

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unsafe"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
)

// Provider checks credentials against the directory. It is safe for
// concurrent use: each logon has its own connection.
type Provider struct {
	cfg Config

	// svcRefused is set when the directory refused the service account's
	// own credentials: deskrun then stops using them, so that a stale
	// service password cannot lock the service account out too.
	mu         sync.Mutex
	svcRefused string
}

var _ identity.Provider = (*Provider)(nil)

// New returns a provider; zero fields of cfg take their defaults. Check
// cfg.Validate first: an invalid config fails every logon with
// DirectoryConfigInvalid.
func New(cfg Config) *Provider { return &Provider{cfg: cfg.withDefaults()} }

const providerName = "ldap"

// Logon checks req's credentials with a simple bind as the user, after the
// account-state checks when a service account is configured. The caller
// zeroes req.Password after it returns.
func (p *Provider) Logon(ctx context.Context, req identity.Request) (*identity.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	name, err := p.parseName(req.Name)
	if err != nil {
		return nil, err
	}
	if err := identity.CheckPassword(req.Password); err != nil {
		return nil, p.stamp(err)
	}
	if err := p.cfg.Validate(); err != nil {
		return nil, p.fail(identity.ReasonDirectoryConfigInvalid, &deskrun.ProviderResult{Name: providerName, Stage: "config", Detail: err.Error()})
	}
	conn, err := p.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// Cancelling ctx closes the connection under any request in flight.
	defer context.AfterFunc(ctx, func() { conn.Close() })()

	var state *AccountState
	if p.serviceOK() {
		st, err := p.readAccount(conn, name)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
		state = st
		if err := p.guard(name, state); err != nil {
			return nil, err
		}
	}

	bindName := name.String()
	if state != nil && state.DN != "" && !p.isAD(state) {
		bindName = state.DN // OpenLDAP binds DNs only
	}
	out := p.bind(conn, bindName, req.Password)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if out.reason == identity.ReasonDirectoryConfigInvalid && strings.HasPrefix(out.result, "34") && state == nil {
		e := p.fail(out.reason, p.result("bind", out))
		e.Message = "The directory binds DNs only, and no service account is configured to find the user's DN; the credentials were not judged."
		return nil, e
	}
	if out.reason != "" {
		return nil, p.explain(name, state, out)
	}
	res := &identity.Result{Identity: identity.Identity{Username: name.String()}}
	if state == nil {
		// Bound as the user: its own entry is readable, for the expiry warning.
		if e, err := findUser(conn, p.cfg.BaseDN, upnOf(name), name.User); err == nil {
			st := stateOf(e)
			state = &st
		}
	}
	if state != nil {
		res.Identity.Username = first(state.Username, name.User)
		res.Identity.UID, res.Identity.GID = state.UIDNumber, state.GIDNumber
		if state.GIDNumber != 0 {
			res.Identity.Groups = []uint32{state.GIDNumber}
		}
		if w, ok := p.expiryWarning(state.PasswordExpires); ok {
			res.Warnings = append(res.Warnings, w)
		}
	}
	if out.expire > 0 {
		if w, ok := p.expiryWarning(p.cfg.Now().Add(out.expire)); ok && len(res.Warnings) == 0 {
			res.Warnings = append(res.Warnings, w)
		}
	}
	return res, nil
}

// parseName accepts the directory forms only. A refusal never counts as a
// failed logon: nothing was sent.
func (p *Provider) parseName(n identity.Name) (identity.Name, error) {
	raw := n.Raw
	if raw == "" {
		raw = n.String()
	}
	name, err := identity.ParseNameOn(raw, deskrun.JoinState("domain"), p.cfg.Domain)
	if err != nil {
		return identity.Name{}, p.stamp(err)
	}
	if name.Kind != identity.KindUPN && name.Kind != identity.KindDomain {
		e := p.fail(identity.ReasonUpnFormatInvalid, nil)
		e.Message = "A directory logon needs a domain name form; \"" + string(name.Kind) + "\" names are local accounts."
		e.Field = "username"
		e.Resolution = identity.ExpectedForm(deskrun.JoinState("domain"), p.cfg.Domain)
		return identity.Name{}, e
	}
	return name, nil
}

// connect dials the directory and establishes TLS (LDAPS or StartTLS),
// verifying its certificate.
func (p *Provider) connect(ctx context.Context) (*goldap.Conn, error) {
	tc, err := p.cfg.tlsConfig()
	if err != nil {
		return nil, p.fail(identity.ReasonDirectoryConfigInvalid, &deskrun.ProviderResult{Name: providerName, Stage: "config", Detail: err.Error()})
	}
	_, addr, ldaps := p.cfg.addr()
	dctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	raw, err := p.cfg.Dial(dctx, "tcp", addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, p.unreachable("connect", addr, err)
	}
	if ldaps {
		tconn := tls.Client(raw, tc)
		if err := tconn.HandshakeContext(dctx); err != nil {
			raw.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, p.unreachable("tls", addr, err)
		}
		raw = tconn
	}
	conn := goldap.NewConn(raw, ldaps)
	conn.Start()
	conn.SetTimeout(p.cfg.Timeout)
	if p.cfg.StartTLS {
		if err := conn.StartTLS(tc); err != nil {
			conn.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, p.unreachable("starttls", addr, err)
		}
	}
	return conn, nil
}

// unreachable is NoLogonServers (retryable: the connection stays usable),
// or DirectoryConfigInvalid when the server answered with a certificate
// the agent does not trust.
func (p *Provider) unreachable(stage, addr string, err error) *deskrun.Error {
	reason := networkReason(err)
	e := p.fail(reason, &deskrun.ProviderResult{Name: providerName, Stage: stage, Result: "error",
		Detail: addr + ": " + scrub(dialDetail(err))})
	if reason == identity.ReasonDirectoryConfigInvalid {
		e.Message = "The directory's TLS certificate is not trusted by the agent; no password was sent."
	}
	return e
}

// serviceOK reports whether the service account is configured and not
// known to be refused.
func (p *Provider) serviceOK() bool {
	if p.cfg.ServiceDN == "" || len(p.cfg.ServicePassword) == 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.svcRefused == ""
}

// readAccount binds as the service account and reads the user's state. A
// name the directory does not know is NoSuchUser, without binding as it.
func (p *Provider) readAccount(conn *goldap.Conn, name identity.Name) (*AccountState, error) {
	out := p.bind(conn, p.cfg.ServiceDN, p.cfg.ServicePassword)
	switch out.reason {
	case "":
	case identity.ReasonNoLogonServers:
		return nil, p.fail(out.reason, p.result("service_bind", out))
	default:
		// Never retry a refused service password: it would lock the
		// service account. Logons go on without the state checks.
		p.mu.Lock()
		p.svcRefused = out.result
		p.mu.Unlock()
		p.cfg.Logger.Error("ldap service account refused; account-state checks and the lockout guard are off until the agent's directory config changes",
			"service_dn", p.cfg.ServiceDN, "result", out.result, "reason", out.reason)
		return nil, nil
	}
	if !p.sameDomain(name) {
		return nil, nil // another domain of the forest: its accounts are not under our base DN
	}
	e, err := findUser(conn, p.cfg.BaseDN, upnOf(name), name.User)
	if errors.Is(err, errNoEntry) {
		ne := p.fail(identity.ReasonNoSuchUser, &deskrun.ProviderResult{Name: providerName, Stage: "search",
			Result: "no entry", Detail: "no account " + name.String() + " under " + p.cfg.BaseDN})
		return nil, ne
	}
	if err != nil {
		return nil, p.searchFailed(err)
	}
	st := stateOf(e)
	if err := readPolicy(conn, p.cfg.BaseDN, e, &st); err != nil {
		return nil, p.searchFailed(err)
	}
	return &st, nil
}

func (p *Provider) searchFailed(err error) *deskrun.Error {
	out := classifyBind(err, nil)
	if out.reason != identity.ReasonNoLogonServers {
		out.reason = identity.ReasonDirectoryConfigInvalid
	}
	return p.fail(out.reason, p.result("search", out))
}

// guard refuses a logon the state says cannot succeed or would harm the
// account, before the password is sent.
//
// The lockout guard is best effort: another client failing between this
// read and the bind (a second agent with the same stale password, a user
// typing) can still bring the account to its threshold. It stops deskrun
// from being the one that locks it, which is the failure that hurts
// (a scheduler retrying a stale password every few minutes).
func (p *Provider) guard(name identity.Name, s *AccountState) error {
	if s == nil {
		return nil
	}
	now := p.cfg.Now()
	stateResult := func(res, detail string) *deskrun.ProviderResult {
		return &deskrun.ProviderResult{Name: providerName, Stage: "account", Result: res, Detail: detail}
	}
	switch {
	case s.LockedOut():
		return p.fail(identity.ReasonAccountLockedOut, stateResult(
			fmt.Sprintf("msDS-User-Account-Control-Computed 0x%x", s.UACComputed),
			fmt.Sprintf("%s is locked out (badPwdCount %d, threshold %d)", s.DN, s.BadPwdCount, s.LockoutThreshold)))
	case s.SmartCardRequired():
		// The password of such an account is random: a bind could only
		// fail, and count towards a lockout.
		return p.fail(identity.ReasonSmartCardRequired, stateResult(
			fmt.Sprintf("userAccountControl 0x%x", s.UAC),
			"SMARTCARD_REQUIRED (0x40000) is set on "+s.DN))
	case s.OneFailureFromLockout(now):
		e := p.fail(identity.ReasonLockoutImminent, stateResult(
			fmt.Sprintf("badPwdCount %d threshold %d", s.Failures(now), s.LockoutThreshold),
			fmt.Sprintf("one more failed logon would lock %s; no bind was attempted", s.DN)))
		e.Message = fmt.Sprintf("%s has %d failed logons and the domain locks accounts at %d: one more would lock it, so deskrun did not try.",
			name.String(), s.Failures(now), s.LockoutThreshold)
		return e
	}
	return nil
}

// explain turns a refused bind into the error, using the account state to
// say more than the server did.
func (p *Provider) explain(name identity.Name, s *AccountState, out bindOutcome) *deskrun.Error {
	reason := out.reason
	pr := p.result("bind", out)
	if s != nil && reason == identity.ReasonWrongPassword {
		var also []string
		if s.Disabled() {
			also = append(also, "the account is also disabled")
		}
		if s.PasswordExpired() {
			also = append(also, "its password has also expired")
		}
		if len(also) > 0 {
			pr.Detail = strings.Join(append([]string{pr.Detail}, also...), "; ")
		}
	}
	e := p.fail(reason, pr)
	switch reason {
	case identity.ReasonWrongPassword:
		if s == nil && out.result == "49 data 52e" {
			e.Message = "The username or the password is wrong (this directory does not say which without a service account)."
		}
	case identity.ReasonNoLogonServers:
		e.Message = "The directory server stopped answering during the logon."
	}
	return e
}

// bind sends a simple bind with the password-policy request control
// (OpenLDAP answers in it; AD ignores it). The password is passed as a
// string view of the caller's buffer, never copied into a long-lived one.
func (p *Provider) bind(conn *goldap.Conn, who string, pw []byte) bindOutcome {
	req := goldap.NewSimpleBindRequest(who, unsafe.String(unsafe.SliceData(pw), len(pw)), []goldap.Control{goldap.NewControlBeheraPasswordPolicy()})
	res, err := conn.SimpleBind(req)
	var ctls []goldap.Control
	if res != nil {
		ctls = res.Controls
	}
	out := classifyBind(err, ctls)
	if pp := ppolicyControl(ctls); pp != nil && pp.Expire > 0 && err == nil {
		out.expire = time.Duration(pp.Expire) * time.Second
	}
	return out
}

func (p *Provider) result(stage string, out bindOutcome) *deskrun.ProviderResult {
	return &deskrun.ProviderResult{Name: providerName, Stage: stage, Result: out.result, Detail: out.detail}
}

func (p *Provider) expiryWarning(expires time.Time) (identity.Warning, bool) {
	if expires.IsZero() || p.cfg.WarnDays < 0 {
		return identity.Warning{}, false
	}
	days := daysLeft(p.cfg.Now(), expires)
	if days < 0 || days > p.cfg.WarnDays {
		return identity.Warning{}, false
	}
	return identity.Warning{Reason: identity.ReasonPasswordExpiresSoon, Days: days,
		Message: fmt.Sprintf("The directory password expires in %d days (%s).", days, expires.UTC().Format("2006-01-02 15:04 MST"))}, true
}

// isAD tells AD accounts (which bind by UPN or DOMAIN\user) from RFC 2307
// ones (which bind by DN).
func (p *Provider) isAD(s *AccountState) bool { return s.UAC != 0 }

// sameDomain reports whether name belongs to the configured domain.
func (p *Provider) sameDomain(name identity.Name) bool {
	switch name.Kind {
	case identity.KindUPN:
		return strings.EqualFold(name.Domain, p.cfg.Domain)
	case identity.KindDomain:
		return strings.EqualFold(name.Domain, p.cfg.NetBIOS) || strings.EqualFold(name.Domain, p.cfg.Domain)
	}
	return false
}

func upnOf(n identity.Name) string {
	if n.Kind == identity.KindUPN {
		return n.User + "@" + n.Domain
	}
	return ""
}

func (p *Provider) stamp(err error) error { return identity.Machine(p.cfg.Machine).Stamp(err) }

func (p *Provider) fail(reason string, pr *deskrun.ProviderResult) *deskrun.Error {
	return identity.Machine(p.cfg.Machine).Fail(reason, pr)
}
