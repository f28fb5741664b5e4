package ldap

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
)

// ErrNoServiceAccount: AccountStatus needs the read-only service account
// (none is configured, or the directory refused its password).
var ErrNoServiceAccount = errors.New("directory: no usable service account to read account state")

// AccountStatus reads name's account with the service account, without
// the user's password, and says what in it forbids a logon: a
// *deskrun.Error with reason AccountDisabled, AccountExpired,
// AccountLockedOut, InvalidLogonHours, SmartCardRequired, PasswordExpired
// or PasswordMustChange (its Provider result says which attribute), or
// NoSuchUser when the directory has no such account, NoLogonServers when
// it cannot be reached. nil means the directory sees nothing wrong with
// the account. Other errors (ErrNoServiceAccount, a name of another
// domain) mean it cannot tell.
//
// The PAM provider asks it when pam_sss answers PAM_PERM_DENIED, which
// SSSD gives alike for all of the above (pam.AccountStater).
func (p *Provider) AccountStatus(ctx context.Context, n identity.Name) error {
	name, err := p.parseName(n)
	if err != nil {
		return err
	}
	if !p.sameDomain(name) {
		return fmt.Errorf("directory: %s is not in domain %s", name, p.cfg.Domain)
	}
	if !p.serviceOK() {
		return ErrNoServiceAccount
	}
	if err := p.cfg.Validate(); err != nil {
		return p.fail(identity.ReasonDirectoryConfigInvalid, &deskrun.ProviderResult{Name: providerName, Stage: "config", Detail: err.Error()})
	}
	conn, err := p.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	defer context.AfterFunc(ctx, func() { conn.Close() })()
	st, err := p.readAccount(conn, name)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	if st == nil {
		return ErrNoServiceAccount // refused just now
	}
	return p.judge(st)
}

// judge is the first thing in s that forbids a logon, in the order a
// domain controller checks them once the password is right.
func (p *Provider) judge(s *AccountState) error {
	now := p.cfg.Now()
	uac := fmt.Sprintf("userAccountControl 0x%x", s.UAC)
	r := func(reason, result, detail string) error {
		return p.fail(reason, &deskrun.ProviderResult{Name: providerName, Stage: "account", Result: result, Detail: detail})
	}
	switch {
	case s.Disabled():
		return r(identity.ReasonAccountDisabled, uac, "ACCOUNTDISABLE (0x2) is set on "+s.DN)
	case s.LockedOut():
		return r(identity.ReasonAccountLockedOut, fmt.Sprintf("msDS-User-Account-Control-Computed 0x%x", s.UACComputed),
			fmt.Sprintf("%s is locked out (badPwdCount %d, threshold %d)", s.DN, s.BadPwdCount, s.LockoutThreshold))
	case s.Expired(now):
		return r(identity.ReasonAccountExpired, "accountExpires "+s.AccountExpires.Format(time.RFC3339),
			s.DN+" expired on "+s.AccountExpires.Format(time.RFC3339))
	case s.OutsideLogonHours(now):
		return r(identity.ReasonInvalidLogonHours, "logonHours",
			fmt.Sprintf("logonHours of %s forbid %s UTC", s.DN, now.UTC().Format("Mon 15:00")))
	case s.SmartCardRequired():
		return r(identity.ReasonSmartCardRequired, uac, "SMARTCARD_REQUIRED (0x40000) is set on "+s.DN)
	case s.MustChange:
		return r(identity.ReasonPasswordMustChange, "pwdLastSet 0", s.DN+" must change its password at the next logon")
	case s.PasswordExpired():
		return r(identity.ReasonPasswordExpired, fmt.Sprintf("msDS-User-Account-Control-Computed 0x%x", s.UACComputed),
			s.DN+" has an expired password")
	}
	return nil
}

// Probe is what `deskrun doctor` learns from the directory.
type Probe struct {
	// Server is host:port; Time the directory's clock (rootDSE
	// currentTime, zero if it has none) and Skew how far it is ahead of
	// this machine's, corrected for half the round trip.
	Server string
	Time   time.Time
	Skew   time.Duration
	// ServiceBound: the service account's bind succeeded. ServiceErr is
	// why not (nil without a service account). Readable lists which of
	// the attributes the state checks need the service account could read
	// on an account other than its own (Sample).
	ServiceBound bool
	ServiceErr   error
	Sample       string
	Readable     map[string]bool
}

// NeededAttributes are what AccountStatus and the lockout guard read.
var NeededAttributes = []string{"userAccountControl", "msDS-User-Account-Control-Computed", "badPwdCount"}

// Probe connects (TLS verified), reads the rootDSE's currentTime, binds
// as the service account if one is configured and reads the needed
// attributes of sample (a sAMAccountName or uid; "" picks any account
// but the service account's own). A connection failure is returned as
// the logon error it would be (NoLogonServers, DirectoryConfigInvalid).
func (p *Provider) Probe(ctx context.Context, sample string) (*Probe, error) {
	if err := p.cfg.Validate(); err != nil {
		return nil, p.fail(identity.ReasonDirectoryConfigInvalid, &deskrun.ProviderResult{Name: providerName, Stage: "config", Detail: err.Error()})
	}
	_, addr, _ := p.cfg.addr()
	pr := &Probe{Server: addr}
	conn, err := p.connect(ctx)
	if err != nil {
		return pr, err
	}
	defer conn.Close()
	defer context.AfterFunc(ctx, func() { conn.Close() })()
	t0 := time.Now()
	res, err := conn.Search(goldap.NewSearchRequest("", goldap.ScopeBaseObject, goldap.NeverDerefAliases, 1, 0, false,
		"(objectClass=*)", []string{"currentTime"}, nil))
	rtt := time.Since(t0)
	if err == nil && len(res.Entries) == 1 {
		if v := res.Entries[0].GetAttributeValue("currentTime"); v != "" {
			if t, err := time.Parse("20060102150405.0Z0700", v); err == nil {
				pr.Time = t
				pr.Skew = t.Sub(t0.Add(rtt / 2)).Truncate(time.Second)
			}
		}
	}
	if p.cfg.ServiceDN == "" {
		return pr, nil
	}
	out := p.bind(conn, p.cfg.ServiceDN, p.cfg.ServicePassword)
	if out.reason != "" {
		pr.ServiceErr = p.fail(out.reason, p.result("service_bind", out))
		return pr, nil
	}
	pr.ServiceBound = true
	f := "(&(objectClass=user)(!(objectClass=computer)))"
	if sample != "" {
		f = "(|(sAMAccountName=" + goldap.EscapeFilter(sample) + ")(uid=" + goldap.EscapeFilter(sample) + "))"
	}
	res, err = conn.Search(goldap.NewSearchRequest(p.cfg.BaseDN, goldap.ScopeWholeSubtree, goldap.NeverDerefAliases, 5, 0, false,
		f, []string{"sAMAccountName", "userPrincipalName"}, nil))
	if err != nil && !goldap.IsErrorWithCode(err, goldap.LDAPResultSizeLimitExceeded) {
		pr.ServiceErr = p.searchFailed(err)
		return pr, nil
	}
	var dn string
	if res != nil {
		for _, e := range res.Entries {
			if sample != "" || !p.isServiceEntry(e) {
				dn, pr.Sample = e.DN, first(e.GetAttributeValue("sAMAccountName"), e.DN)
				break
			}
		}
	}
	if dn == "" {
		pr.ServiceErr = fmt.Errorf("the service account finds no account to read under %s", p.cfg.BaseDN)
		return pr, nil
	}
	res, err = conn.Search(goldap.NewSearchRequest(dn, goldap.ScopeBaseObject, goldap.NeverDerefAliases, 1, 0, false,
		"(objectClass=*)", NeededAttributes, nil))
	if err != nil || len(res.Entries) != 1 {
		pr.ServiceErr = fmt.Errorf("read %s: %v", dn, err)
		return pr, nil
	}
	pr.Readable = map[string]bool{}
	for _, a := range NeededAttributes {
		pr.Readable[a] = len(res.Entries[0].GetAttributeValues(a)) > 0
	}
	return pr, nil
}

// isServiceEntry reports whether e is the service account's own entry
// (which it may read with more rights than others').
func (p *Provider) isServiceEntry(e *goldap.Entry) bool {
	svc := p.cfg.ServiceDN
	return strings.EqualFold(e.DN, svc) || strings.EqualFold(e.GetAttributeValue("userPrincipalName"), svc) ||
		strings.EqualFold(p.cfg.NetBIOS+`\`+e.GetAttributeValue("sAMAccountName"), svc)
}
