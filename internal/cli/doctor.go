package cli

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

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/pam"
)

// check is one line of doctor's report.
type check struct {
	Name   string `json:"name"`
	Status string `json:"status"` // pass, warn, fail, skip
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

type doctorOptions struct {
	pam     pamOptions
	User    string
	JSON    bool
	Timeout time.Duration
	// host paths, hidden: tests point them at fixtures
	SSSDConf, Krb5Conf, SmbConf string
}

func newDoctorCmd(a *app) *cobra.Command {
	var o doctorOptions
	c := &cobra.Command{
		Use:   "doctor",
		Short: "Check that this machine can log users on for deskrun, and say how to fix what cannot",
		Long: `Check, on this machine: running as root; deskrun's PAM services installed (and
never falling back to "other"); the join state (SSSD, winbind, Kerberos realm); the
domain's authentication endpoints (DNS SRV, TCP to KDC and LDAP) and the clock skew
against the domain controller. With --user, also: NSS resolves the user; the
account's state in shadow (locked, expired, password age, expiring soon, faillock);
and whether each logon type is granted (the account stage, without a password).

Each check passes, warns or fails, with the fix. Exits 1 if any check fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDoctor(cmd.Context(), a, &o) },
	}
	f := c.Flags()
	f.StringVar(&o.User, "user", "", "also check this user's account and logon rights")
	f.BoolVar(&o.JSON, "json", false, "print the checks as JSON")
	f.DurationVar(&o.Timeout, "timeout", 3*time.Second, "time limit of each network check")
	o.pam.register(c, true)
	d := identity.DefaultHostPaths()
	f.StringVar(&o.SSSDConf, "sssd-conf", d.SSSDConf, "SSSD configuration")
	f.StringVar(&o.Krb5Conf, "krb5-conf", d.Krb5Conf, "Kerberos configuration")
	f.StringVar(&o.SmbConf, "smb-conf", d.SmbConf, "Samba configuration")
	for _, n := range []string{"sssd-conf", "krb5-conf", "smb-conf"} {
		_ = f.MarkHidden(n)
	}
	return c
}

func runDoctor(ctx context.Context, a *app, o *doctorOptions) error {
	var checks []check
	add := func(c check) { checks = append(checks, c) }
	s := o.pam.stack(a)
	root := os.Geteuid() == 0

	if root {
		add(check{Name: "root", Status: "pass", Detail: "running as root, as the agent does"})
	} else {
		add(check{Name: "root", Status: "fail", Detail: "not root: PAM cannot check other users' passwords and shadow is unreadable",
			Fix: "sudo deskrun doctor"})
	}
	if pam.Available() {
		add(check{Name: "pam", Status: "pass", Detail: "Linux-PAM with pam_start_confdir"})
	} else {
		add(check{Name: "pam", Status: "fail", Detail: "this build has no PAM provider", Fix: "install the Linux package of deskrun (cgo build with libpam)"})
	}
	for _, lt := range identity.LogonTypes() {
		add(serviceCheck(s, lt))
	}

	join, err := identity.DetectJoin(identity.HostPaths{SSSDConf: o.SSSDConf, Krb5Conf: o.Krb5Conf, SmbConf: o.SmbConf})
	switch {
	case err != nil:
		add(check{Name: "join", Status: "warn", Detail: err.Error(), Fix: "make the file readable by root"})
	case join.State == deskrun.JoinLocal:
		add(check{Name: "join", Status: "pass", Detail: "local-only: no SSSD, winbind or Kerberos realm configured; use local accounts (user or .\\user)"})
	default:
		add(check{Name: "join", Status: "pass", Detail: fmt.Sprintf("%s, domain %s, realm %s (from %s)", join.State, join.Domain, join.Realm, strings.Join(join.Sources, ", "))})
	}
	checks = append(checks, endpointChecks(ctx, join, o.Timeout)...)

	if o.User != "" {
		checks = append(checks, userChecks(ctx, s, join, o.User, root)...)
	}

	failed := false
	for _, c := range checks {
		failed = failed || c.Status == "fail"
	}
	if o.JSON {
		if err := printJSON(a.io.Out, map[string]any{"ok": !failed, "checks": checks}); err != nil {
			return err
		}
	} else {
		for _, c := range checks {
			fmt.Fprintf(a.io.Out, "%-4s  %-26s %s\n", strings.ToUpper(c.Status), c.Name, c.Detail)
			if c.Fix != "" && c.Status != "pass" {
				fmt.Fprintf(a.io.Out, "      %-26s fix: %s\n", "", c.Fix)
			}
		}
	}
	if failed {
		e := identity.Fail(identity.ReasonDoctorFailed, nil)
		return e
	}
	return nil
}

func serviceCheck(s pam.Stack, lt identity.LogonType) check {
	name := "pam service " + string(lt)
	path := s.ServiceFile(lt)
	b, err := os.ReadFile(path)
	if err != nil {
		return check{Name: name, Status: "fail",
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
		return check{Name: name, Status: "warn", Detail: path + ": " + strings.Join(problems, "; "), Fix: "deskrun agent install-pam" + pamDirFlag(s)}
	}
	return check{Name: name, Status: "pass", Detail: path}
}

func pamDirFlag(s pam.Stack) string {
	if s.PAMDir == pam.DefaultStack().PAMDir {
		return ""
	}
	return " --pam-dir " + s.PAMDir
}

func userChecks(ctx context.Context, s pam.Stack, join identity.JoinInfo, raw string, root bool) []check {
	var out []check
	name, err := identity.ParseNameOn(raw, join.State, join.Domain)
	if err != nil {
		var de *deskrun.Error
		errors.As(err, &de)
		return []check{{Name: "username", Status: "fail", Detail: de.Message, Fix: de.Resolution}}
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
		return append(out, check{Name: "nss", Status: "fail", Detail: fmt.Sprintf("%s: %s (%s)", nssName, e.Message, reason), Fix: e.Resolution})
	}
	out = append(out, check{Name: "nss", Status: "pass", Detail: fmt.Sprintf("%s is uid %s gid %s home %s", u.Username, u.Uid, u.Gid, u.HomeDir)})

	if !root {
		out = append(out, check{Name: "account", Status: "skip", Detail: "shadow and faillock need root", Fix: "sudo deskrun doctor --user " + raw})
	} else if name.LocalTo(host) {
		out = append(out, accountCheck(s, u.Username))
	}

	p := pam.New(pam.Config{Stack: s, Join: join, Machine: host})
	for _, lt := range identity.LogonTypes() {
		c := check{Name: "logon right " + string(lt)}
		_, err := p.CheckAccount(ctx, name, lt)
		var de *deskrun.Error
		switch {
		case err == nil:
			c.Status, c.Detail = "pass", "account stage of "+pam.ServiceName(lt)+" accepts the user (password not checked)"
		case errors.As(err, &de):
			c.Status, c.Detail, c.Fix = "fail", fmt.Sprintf("%s: %s", de.Reason, de.Message), de.Resolution
			if de.Status != "" {
				c.Detail += fmt.Sprintf(" [%s %d]", de.Status, de.StatusDecimal)
			}
		default:
			c.Status, c.Detail = "fail", err.Error()
		}
		out = append(out, c)
	}
	return out
}

func accountCheck(s pam.Stack, username string) check {
	c := check{Name: "account"}
	st, err := pam.ReadAccountState(s, "", username, time.Now())
	if err != nil || !st.Found {
		c.Status, c.Detail = "warn", "no shadow entry (a directory account, or shadow unreadable)"
		return c
	}
	fix := func(reason string) string { e, _ := identity.Lookup(reason); return e.Resolution }
	switch {
	case st.Locked || st.NoPassword:
		c.Status, c.Detail, c.Fix = "fail", "password locked (AccountDisabled)", fix(identity.ReasonAccountDisabled)
	case st.AccountExpired:
		c.Status, c.Detail, c.Fix = "fail", "account expired on "+st.AccountExpires.Format(time.DateOnly)+" (AccountExpired)", fix(identity.ReasonAccountExpired)
	case st.MustChange:
		c.Status, c.Detail, c.Fix = "fail", "password must be changed (PasswordMustChange)", fix(identity.ReasonPasswordMustChange)
	case st.PasswordExpired:
		c.Status, c.Detail, c.Fix = "fail", "password expired on "+st.PasswordExpires.Format(time.DateOnly)+" (PasswordExpired)", fix(identity.ReasonPasswordExpired)
	case st.FaillockLocked:
		c.Status, c.Detail, c.Fix = "fail", fmt.Sprintf("locked by pam_faillock after %d failures (AccountLockedOut)", st.Failures), fix(identity.ReasonAccountLockedOut)
	case !st.PasswordExpires.IsZero() && st.DaysUntilPwdExpiry <= max(st.WarnDays, 7):
		c.Status, c.Detail, c.Fix = "warn", fmt.Sprintf("password expires in %d days (PasswordExpiresSoon)", st.DaysUntilPwdExpiry), fix(identity.ReasonPasswordExpiresSoon)
	default:
		c.Status = "pass"
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
func endpointChecks(ctx context.Context, join identity.JoinInfo, timeout time.Duration) []check {
	if join.State == deskrun.JoinLocal || join.Domain == "" {
		return []check{
			{Name: "auth endpoints", Status: "skip", Detail: "skipped: no domain configured"},
			{Name: "clock skew", Status: "skip", Detail: "skipped: no domain configured"},
		}
	}
	var out []check
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var r net.Resolver
	type target struct{ host, port string }
	var targets []target
	for _, srv := range []struct{ service, port string }{{"kerberos", "88"}, {"ldap", "389"}} {
		_, addrs, err := r.LookupSRV(ctx, srv.service, "tcp", join.Domain)
		name := fmt.Sprintf("dns srv _%s._tcp.%s", srv.service, join.Domain)
		if err != nil || len(addrs) == 0 {
			st := "fail"
			if len(join.Servers) > 0 {
				st = "warn"
			}
			out = append(out, check{Name: "dns srv " + srv.service, Status: st, Detail: name + ": no record", Fix: "point /etc/resolv.conf at the domain's DNS servers (the DCs)"})
			continue
		}
		hosts := make([]string, 0, len(addrs))
		for _, a := range addrs {
			h := strings.TrimSuffix(a.Target, ".")
			hosts = append(hosts, h)
			targets = append(targets, target{h, strconv.Itoa(int(a.Port))})
		}
		out = append(out, check{Name: "dns srv " + srv.service, Status: "pass", Detail: name + ": " + strings.Join(hosts, ", ")})
	}
	for _, s := range join.Servers {
		h, p, err := net.SplitHostPort(s)
		if err != nil {
			targets = append(targets, target{s, "88"}, target{s, "389"})
		} else {
			targets = append(targets, target{h, p})
		}
	}
	results := make([]check, len(targets))
	var wg sync.WaitGroup
	var d net.Dialer
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr := net.JoinHostPort(t.host, t.port)
			conn, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				results[i] = check{Name: "tcp " + addr, Status: "fail", Detail: err.Error(), Fix: "open the firewall to the DC (TCP 88 Kerberos, 389 LDAP), check the VPN"}
				return
			}
			conn.Close()
			results[i] = check{Name: "tcp " + addr, Status: "pass", Detail: "reachable"}
		}()
	}
	wg.Wait()
	out = append(out, results...)
	skew := check{Name: "clock skew", Status: "skip", Detail: "skipped: no domain controller reachable"}
	for i, t := range targets {
		if results[i].Status != "pass" {
			continue
		}
		off, err := sntpOffset(t.host, timeout)
		if err != nil {
			skew = check{Name: "clock skew", Status: "warn", Detail: "no NTP answer from " + t.host + ": " + err.Error(), Fix: "check UDP 123 to the DC"}
			break
		}
		abs := off.Abs()
		switch {
		case abs > 5*time.Minute:
			skew = check{Name: "clock skew", Status: "fail", Detail: fmt.Sprintf("%v against %s: Kerberos refuses more than 5m (TimeDifferenceAtDC)", off.Round(time.Millisecond), t.host), Fix: "chronyc makestep, or timedatectl set-ntp true"}
		case abs > time.Minute:
			skew = check{Name: "clock skew", Status: "warn", Detail: fmt.Sprintf("%v against %s", off.Round(time.Millisecond), t.host), Fix: "enable NTP: timedatectl set-ntp true"}
		default:
			skew = check{Name: "clock skew", Status: "pass", Detail: fmt.Sprintf("%v against %s", off.Round(time.Millisecond), t.host)}
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
