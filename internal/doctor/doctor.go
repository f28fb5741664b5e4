// Package doctor checks that a machine can log users on for deskrun, and
// says how to fix what it cannot. `deskrun doctor` prints its report; the
// agent runs the machine-wide checks (no user) when it connects and then
// hourly, and sends the report to the server, which shows it on the
// machine's page.
package doctor

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/agent"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/ldap"
	"github.com/deskrun/deskrun/internal/identity/pam"
)

// Check is one line of the report; Report the whole of it.
type (
	Check  = deskrun.DoctorCheck
	Report = deskrun.DoctorReport
)

// Statuses of a check.
const (
	Pass = deskrun.DoctorPass
	Warn = deskrun.DoctorWarn
	Fail = deskrun.DoctorFail
	Skip = deskrun.DoctorSkip
)

// Options say what to check, and where the machine's files are.
type Options struct {
	// Stack is deskrun's PAM services and files.
	Stack pam.Stack
	// Paths are the join configuration files (sssd.conf, krb5.conf,
	// smb.conf); tests point them at fixtures.
	Paths identity.HostPaths
	// Timeout bounds each network check; 0 means 3s.
	Timeout time.Duration
	// DirectoryConfig is the agent config with the directory: section;
	// StateDir the agent state whose key opens the sealed service
	// password. DirectoryConfig empty: the directory is discovered from
	// sssd.conf only.
	DirectoryConfig, StateDir string
	// User, when set, also checks this user's account and logon rights
	// (`deskrun doctor --user`); the agent's report is machine-wide only.
	User string
	// Now is the report's clock; nil means time.Now.
	Now func() time.Time
}

// Run runs the checks and returns the report. It never fails: what it
// cannot check is a failed or skipped check. ctx bounds the network checks.
func Run(ctx context.Context, o Options) Report {
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Second
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	var checks []Check
	add := func(c Check) { checks = append(checks, c) }
	s := o.Stack
	root := os.Geteuid() == 0

	if root {
		add(Check{Name: "root", Status: Pass, Detail: "running as root, as the agent does"})
	} else {
		add(Check{Name: "root", Status: Fail, Detail: "not root: PAM cannot check other users' passwords and shadow is unreadable",
			Fix: "sudo deskrun doctor"})
	}
	if pam.Available() {
		add(Check{Name: "pam", Status: Pass, Detail: "Linux-PAM with pam_start_confdir"})
	} else {
		add(Check{Name: "pam", Status: Fail, Detail: "this build has no PAM provider", Fix: "install the Linux package of deskrun (cgo build with libpam)"})
	}
	for _, lt := range identity.LogonTypes() {
		add(serviceCheck(s, lt))
	}

	join, err := identity.DetectJoin(o.Paths)
	switch {
	case err != nil:
		add(Check{Name: "join", Status: Warn, Detail: err.Error(), Fix: "make the file readable by root"})
	case join.State == deskrun.JoinLocal:
		add(Check{Name: "join", Status: Pass, Detail: "local-only: no SSSD, winbind or Kerberos realm configured; use local accounts (user or .\\user)"})
	default:
		add(Check{Name: "join", Status: Pass, Detail: fmt.Sprintf("%s, domain %s, realm %s (from %s)", join.State, join.Domain, join.Realm, strings.Join(join.Sources, ", "))})
	}
	checks = append(checks, endpointChecks(ctx, join, o.Timeout)...)
	checks = directoryChecks(ctx, &o, join, checks)

	if o.User != "" {
		checks = append(checks, userChecks(ctx, s, join, o.User, root)...)
	}
	return Report{At: now(), Checks: checks}
}

func serviceCheck(s pam.Stack, lt identity.LogonType) Check {
	name := "pam service " + string(lt)
	path := s.ServiceFile(lt)
	b, err := os.ReadFile(path)
	if err != nil {
		return Check{Name: name, Status: Fail,
			Detail: fmt.Sprintf("%s missing: %s logons are refused (PamServiceMissing), never passed to PAM's \"other\"", path, lt),
			Fix:    "deskrun agent install-pam" + pamDirFlag(s)}
	}
	body := string(b)
	var problems []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "@include") {
			problems = append(problems, "uses @include (looked up in the same directory)")
			break
		}
	}
	for _, mod := range []string{"pam_unix.so", "pam_faillock.so"} {
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "auth") && strings.Contains(l, mod) && !strings.Contains(l, "nodelay") {
				problems = append(problems, mod+" without nodelay (each failure costs 2 s)")
				break
			}
		}
	}
	if len(problems) > 0 {
		return Check{Name: name, Status: Warn, Detail: path + ": " + strings.Join(problems, "; "), Fix: "deskrun agent install-pam" + pamDirFlag(s)}
	}
	return Check{Name: name, Status: Pass, Detail: path}
}

func pamDirFlag(s pam.Stack) string {
	if s.PAMDir == pam.DefaultStack().PAMDir {
		return ""
	}
	return " --pam-dir " + s.PAMDir
}

func userChecks(ctx context.Context, s pam.Stack, join identity.JoinInfo, raw string, root bool) []Check {
	var out []Check
	name, err := identity.ParseNameOn(raw, join.State, join.Domain)
	if err != nil {
		var de *deskrun.Error
		errors.As(err, &de)
		return []Check{{Name: "username", Status: Fail, Detail: de.Message, Fix: de.Resolution}}
	}
	host, _ := os.Hostname()
	nssName := name.User
	if !name.LocalTo(host) {
		nssName = name.Raw
	}
	u, err := user.Lookup(nssName)
	if err != nil {
		reason := identity.ReasonNoSuchUser
		if name.IsDomainForm(host) && join.State != deskrun.JoinLocal {
			reason = identity.ReasonUserNotPropagated
		}
		e, _ := identity.Lookup(reason)
		return append(out, Check{Name: "nss", Status: Fail, Detail: fmt.Sprintf("%s: %s (%s)", nssName, e.Message, reason), Fix: e.Resolution})
	}
	out = append(out, Check{Name: "nss", Status: Pass, Detail: fmt.Sprintf("%s is uid %s gid %s home %s", u.Username, u.Uid, u.Gid, u.HomeDir)})

	if !root {
		out = append(out, Check{Name: "account", Status: Skip, Detail: "shadow and faillock need root", Fix: "sudo deskrun doctor --user " + raw})
	} else if name.LocalTo(host) {
		out = append(out, accountCheck(s, u.Username))
	}

	p := pam.New(pam.Config{Stack: s, Join: join, Machine: host})
	for _, lt := range identity.LogonTypes() {
		c := Check{Name: "logon right " + string(lt)}
		_, err := p.CheckAccount(ctx, name, lt)
		var de *deskrun.Error
		switch {
		case err == nil:
			c.Status, c.Detail = Pass, "account stage of "+pam.ServiceName(lt)+" accepts the user (password not checked)"
		case errors.As(err, &de):
			c.Status, c.Detail, c.Fix = Fail, fmt.Sprintf("%s: %s", de.Reason, de.Message), de.Resolution
			if de.Status != "" {
				c.Detail += fmt.Sprintf(" [%s %d]", de.Status, de.StatusDecimal)
			}
		default:
			c.Status, c.Detail = Fail, err.Error()
		}
		out = append(out, c)
	}
	return out
}

func accountCheck(s pam.Stack, username string) Check {
	c := Check{Name: "account"}
	st, err := pam.ReadAccountState(s, "", username, time.Now())
	if err != nil || !st.Found {
		c.Status, c.Detail = Warn, "no shadow entry (a directory account, or shadow unreadable)"
		return c
	}
	fix := func(reason string) string { e, _ := identity.Lookup(reason); return e.Resolution }
	switch {
	case st.Locked || st.NoPassword:
		c.Status, c.Detail, c.Fix = Fail, "password locked (AccountDisabled)", fix(identity.ReasonAccountDisabled)
	case st.AccountExpired:
		c.Status, c.Detail, c.Fix = Fail, "account expired on "+st.AccountExpires.Format(time.DateOnly)+" (AccountExpired)", fix(identity.ReasonAccountExpired)
	case st.MustChange:
		c.Status, c.Detail, c.Fix = Fail, "password must be changed (PasswordMustChange)", fix(identity.ReasonPasswordMustChange)
	case st.PasswordExpired:
		c.Status, c.Detail, c.Fix = Fail, "password expired on "+st.PasswordExpires.Format(time.DateOnly)+" (PasswordExpired)", fix(identity.ReasonPasswordExpired)
	case st.FaillockLocked:
		c.Status, c.Detail, c.Fix = Fail, fmt.Sprintf("locked by pam_faillock after %d failures (AccountLockedOut)", st.Failures), fix(identity.ReasonAccountLockedOut)
	case !st.PasswordExpires.IsZero() && st.DaysUntilPwdExpiry <= max(st.WarnDays, 7):
		c.Status, c.Detail, c.Fix = Warn, fmt.Sprintf("password expires in %d days (PasswordExpiresSoon)", st.DaysUntilPwdExpiry), fix(identity.ReasonPasswordExpiresSoon)
	default:
		c.Status = Pass
		c.Detail = "enabled, not expired"
		if !st.PasswordExpires.IsZero() {
			c.Detail += ", password valid until " + st.PasswordExpires.Format(time.DateOnly)
		} else {
			c.Detail += ", password never expires"
		}
		if st.Failures > 0 {
			c.Detail += fmt.Sprintf(", %d recent failures of %d allowed", st.Failures, s.Deny)
		}
	}
	return c
}

// endpointChecks resolve the domain's KDC and LDAP servers (configured, or
// DNS SRV) and dial them, then measure the clock skew against the first
// reachable one with SNTP (domain controllers serve NTP).
func endpointChecks(ctx context.Context, join identity.JoinInfo, timeout time.Duration) []Check {
	if join.State == deskrun.JoinLocal || join.Domain == "" {
		return []Check{
			{Name: "auth endpoints", Status: Skip, Detail: "skipped: no domain configured"},
			{Name: "clock skew", Status: Skip, Detail: "skipped: no domain configured"},
		}
	}
	var out []Check
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var r net.Resolver
	type target struct{ host, port string }
	var targets []target
	for _, srv := range []struct{ service, port string }{{"kerberos", "88"}, {"ldap", "389"}} {
		_, addrs, err := r.LookupSRV(ctx, srv.service, "tcp", join.Domain)
		name := fmt.Sprintf("dns srv _%s._tcp.%s", srv.service, join.Domain)
		if err != nil || len(addrs) == 0 {
			st := Fail
			if len(join.Servers) > 0 {
				st = Warn
			}
			out = append(out, Check{Name: "dns srv " + srv.service, Status: st, Detail: name + ": no record", Fix: "point /etc/resolv.conf at the domain's DNS servers (the DCs)"})
			continue
		}
		hosts := make([]string, 0, len(addrs))
		for _, a := range addrs {
			h := strings.TrimSuffix(a.Target, ".")
			hosts = append(hosts, h)
			targets = append(targets, target{h, strconv.Itoa(int(a.Port))})
		}
		out = append(out, Check{Name: "dns srv " + srv.service, Status: Pass, Detail: name + ": " + strings.Join(hosts, ", ")})
	}
	for _, s := range join.Servers {
		h, p, err := net.SplitHostPort(s)
		if err != nil {
			targets = append(targets, target{s, "88"}, target{s, "389"})
		} else {
			targets = append(targets, target{h, p})
		}
	}
	results := make([]Check, len(targets))
	var wg sync.WaitGroup
	var d net.Dialer
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr := net.JoinHostPort(t.host, t.port)
			conn, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				results[i] = Check{Name: "tcp " + addr, Status: Fail, Detail: err.Error(), Fix: "open the firewall to the DC (TCP 88 Kerberos, 389 LDAP), check the VPN"}
				return
			}
			conn.Close()
			results[i] = Check{Name: "tcp " + addr, Status: Pass, Detail: "reachable"}
		}()
	}
	wg.Wait()
	out = append(out, results...)
	skew := Check{Name: "clock skew", Status: Skip, Detail: "skipped: no domain controller reachable"}
	for i, t := range targets {
		if results[i].Status != Pass {
			continue
		}
		off, err := sntpOffset(t.host, timeout)
		if err != nil {
			skew = Check{Name: "clock skew", Status: Warn, Detail: "no NTP answer from " + t.host + ": " + err.Error(), Fix: "check UDP 123 to the DC"}
			break
		}
		abs := off.Abs()
		switch {
		case abs > 5*time.Minute:
			skew = Check{Name: "clock skew", Status: Fail, Detail: fmt.Sprintf("%v against %s: Kerberos refuses more than 5m (TimeDifferenceAtDC)", off.Round(time.Millisecond), t.host), Fix: "chronyc makestep, or timedatectl set-ntp true"}
		case abs > time.Minute:
			skew = Check{Name: "clock skew", Status: Warn, Detail: fmt.Sprintf("%v against %s", off.Round(time.Millisecond), t.host), Fix: "enable NTP: timedatectl set-ntp true"}
		default:
			skew = Check{Name: "clock skew", Status: Pass, Detail: fmt.Sprintf("%v against %s", off.Round(time.Millisecond), t.host)}
		}
		break
	}
	return append(out, skew)
}

// sntpOffset asks host's NTP server for the time (RFC 4330) and returns
// how far the local clock is behind it.
func sntpOffset(host string, timeout time.Duration) (time.Duration, error) {
	conn, err := net.DialTimeout("udp", net.JoinHostPort(host, "123"), timeout)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	req := make([]byte, 48)
	req[0] = 0x1B // LI 0, version 3, client
	t1 := time.Now()
	if _, err := conn.Write(req); err != nil {
		return 0, err
	}
	resp := make([]byte, 48)
	if _, err := conn.Read(resp); err != nil {
		return 0, err
	}
	t4 := time.Now()
	ntp := func(b []byte) time.Time {
		sec := binary.BigEndian.Uint32(b[0:4])
		frac := binary.BigEndian.Uint32(b[4:8])
		return time.Unix(int64(sec)-2208988800, int64(frac)*1e9>>32)
	}
	t2, t3 := ntp(resp[32:40]), ntp(resp[40:48])
	return (t2.Sub(t1) + t3.Sub(t4)) / 2, nil
}

// directoryChecks check the agent's directory (agent.yaml's directory:
// section, else what sssd.conf says): the DC's ports, a verified TLS
// connection, the clock skew against the DC's own clock (LDAP rootDSE
// currentTime, which a DC always serves, unlike NTP), and the service
// account. They replace endpointChecks' clock skew when they read it.
func directoryChecks(ctx context.Context, o *Options, join identity.JoinInfo, checks []Check) []Check {
	add := func(c Check) {
		for i := range checks {
			if checks[i].Name == c.Name {
				if c.Name == "clock skew" || checks[i].Status == Skip {
					checks[i] = c
				}
				return
			}
		}
		checks = append(checks, c)
	}
	dc, source, err := loadDirectory(o)
	switch {
	case err != nil:
		add(Check{Name: "directory", Status: Fail, Detail: err.Error(), Fix: "fix the directory: section of " + o.DirectoryConfig + " (docs/identity.md, Domain users with SSSD)"})
		return checks
	case dc == nil:
		add(Check{Name: "directory", Status: Skip, Detail: "no directory configured (" + o.DirectoryConfig + " has no directory: section, sssd.conf no domain)"})
		return checks
	}
	add(Check{Name: "directory", Status: Pass, Detail: fmt.Sprintf("%s, domain %s (from %s)", dc.URL, dc.Domain, source)})
	cfg := dc.LDAPConfig()
	cfg.Timeout = o.Timeout
	var prov *ldap.Provider
	if dc.ServicePasswordSealed != "" {
		state := o.StateDir
		id, err := agent.LoadIdentity(state)
		if err == nil {
			d := *dc
			d.Timeout = o.Timeout
			prov, err = d.DirectoryProvider(id.SealKey, "")
		}
		if err != nil {
			add(Check{Name: "directory service account", Status: Fail, Detail: "the sealed password does not open: " + err.Error(),
				Fix: "deskrun agent directory set-service-password --state-dir " + state + " --config " + o.DirectoryConfig})
		}
	}
	if prov == nil {
		cfg.ServiceDN = ""
		prov = ldap.New(cfg)
	}

	// DNS SRV for the directory's domain, unless the join checks did it.
	if !strings.EqualFold(join.Domain, dc.Domain) || join.State == deskrun.JoinLocal {
		sctx, cancel := context.WithTimeout(ctx, o.Timeout)
		var r net.Resolver
		for _, srv := range []string{"ldap", "kerberos"} {
			name := fmt.Sprintf("_%s._tcp.%s", srv, dc.Domain)
			_, addrs, err := r.LookupSRV(sctx, srv, "tcp", dc.Domain)
			if err != nil || len(addrs) == 0 {
				add(Check{Name: "dns srv " + srv, Status: Warn, Detail: name + ": no record; the configured " + dc.URL + " is used",
					Fix: "point /etc/resolv.conf at the domain's DNS servers (the DCs) for failover"})
				continue
			}
			var hosts []string
			for _, a := range addrs {
				hosts = append(hosts, strings.TrimSuffix(a.Target, "."))
			}
			add(Check{Name: "dns srv " + srv, Status: Pass, Detail: name + ": " + strings.Join(hosts, ", ")})
		}
		cancel()
	}

	// TCP to the directory's DC: Kerberos, LDAP, LDAPS.
	host := dcHost(dc.URL)
	ports := []string{"88", "389", "636"}
	results := make([]Check, len(ports))
	var wg sync.WaitGroup
	for i, port := range ports {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr := net.JoinHostPort(host, port)
			d := net.Dialer{Timeout: o.Timeout}
			conn, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				results[i] = Check{Name: "tcp " + addr, Status: Fail, Detail: err.Error(), Fix: "start the DC or open the firewall to it (TCP 88 Kerberos, 389 LDAP, 636 LDAPS), check the VPN"}
				return
			}
			conn.Close()
			results[i] = Check{Name: "tcp " + addr, Status: Pass, Detail: "reachable"}
		}()
	}
	wg.Wait()
	for _, c := range results {
		add(c)
	}

	pctx, cancel := context.WithTimeout(ctx, 3*o.Timeout)
	defer cancel()
	pr, err := prov.Probe(pctx, "")
	if err != nil {
		c := Check{Name: "directory ldap", Status: Fail, Detail: err.Error()}
		var de *deskrun.Error
		if errors.As(err, &de) {
			c.Detail = fmt.Sprintf("%s: %s", de.Reason, de.Message)
			if de.Provider != nil {
				c.Detail += " (" + de.Provider.Detail + ")"
			}
			c.Fix = de.Resolution
		}
		add(c)
		return checks
	}
	tlsMode := "LDAPS"
	if dc.StartTLS {
		tlsMode = "StartTLS"
	}
	add(Check{Name: "directory ldap", Status: Pass, Detail: fmt.Sprintf("%s %s, certificate verified", tlsMode, pr.Server)})
	if !pr.Time.IsZero() {
		skew := pr.Skew
		detail := fmt.Sprintf("%v against the DC %s (LDAP currentTime %s)", skew, pr.Server, pr.Time.UTC().Format(time.RFC3339))
		switch abs := skew.Abs(); {
		case abs > 5*time.Minute:
			add(Check{Name: "clock skew", Status: Fail, Detail: detail + ": Kerberos refuses more than 5m (TimeDifferenceAtDC)", Fix: "sync the clock with the DC: chronyc makestep, or timedatectl set-ntp true"})
		case abs > time.Minute:
			add(Check{Name: "clock skew", Status: Warn, Detail: detail, Fix: "enable NTP: timedatectl set-ntp true"})
		default:
			add(Check{Name: "clock skew", Status: Pass, Detail: detail})
		}
	}
	switch {
	case dc.ServiceAccount() == "":
		add(Check{Name: "directory service account", Status: Warn,
			Detail: "none configured: a domain user pam_sss refuses gets AccountRestriction, not the exact reason (disabled, expired, locked, logon hours)",
			Fix:    "add service_user (a read-only account) to the directory: section, then deskrun agent directory set-service-password"})
	case dc.ServicePasswordSealed == "":
		add(Check{Name: "directory service account", Status: Fail, Detail: dc.ServiceAccount() + " has no sealed password",
			Fix: "deskrun agent directory set-service-password --config " + o.DirectoryConfig})
	case pr.ServiceErr != nil && !pr.ServiceBound:
		c := Check{Name: "directory service account", Status: Fail, Detail: dc.ServiceAccount() + ": " + pr.ServiceErr.Error(),
			Fix: "check the account in the directory, then deskrun agent directory set-service-password --config " + o.DirectoryConfig}
		var de *deskrun.Error
		if errors.As(pr.ServiceErr, &de) && de.Provider != nil {
			c.Detail = fmt.Sprintf("%s: %s (%s)", dc.ServiceAccount(), de.Reason, de.Provider.Result)
		}
		add(c)
	case pr.ServiceErr != nil:
		add(Check{Name: "directory service account", Status: Fail, Detail: pr.ServiceErr.Error(), Fix: "let the service account read users under " + dc.BaseDN})
	default:
		var missing []string
		for _, attr := range ldap.NeededAttributes {
			if !pr.Readable[attr] {
				missing = append(missing, attr)
			}
		}
		if len(missing) > 0 {
			add(Check{Name: "directory service account", Status: Fail,
				Detail: fmt.Sprintf("%s cannot read %s of %s", dc.ServiceAccount(), strings.Join(missing, ", "), pr.Sample),
				Fix:    "grant the service account read access to these attributes of user objects (AD: Read all user information / Read Property)"})
		} else {
			add(Check{Name: "directory service account", Status: Pass,
				Detail: fmt.Sprintf("%s binds and reads %s (checked on %s)", dc.ServiceAccount(), strings.Join(ldap.NeededAttributes, ", "), pr.Sample)})
		}
	}
	return checks
}

// loadDirectory reads the directory: section of the agent config, else
// discovers the directory from sssd.conf.
func loadDirectory(o *Options) (*agent.DirectoryConfig, string, error) {
	if o.DirectoryConfig != "" {
		if _, err := os.Stat(o.DirectoryConfig); err == nil {
			dc, err := agent.LoadDirectoryConfig(o.DirectoryConfig)
			if err != nil || dc != nil {
				return dc, o.DirectoryConfig, err
			}
		}
	}
	dc, err := agent.DiscoverDirectory(identity.HostPaths{SSSDConf: o.Paths.SSSDConf, Krb5Conf: o.Paths.Krb5Conf})
	if dc != nil {
		dc.ServiceDN = "" // discovered: no sealed password to go with it
	}
	return dc, o.Paths.SSSDConf + " (discovered)", err
}

// dcHost is the host of an ldap:// or ldaps:// URL.
func dcHost(u string) string {
	h := strings.TrimPrefix(strings.TrimPrefix(u, "ldaps://"), "ldap://")
	h, _, _ = strings.Cut(h, "/")
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return strings.Trim(h, "[]")
}
