//go:build linux && cgo

package pam

/*
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <sys/types.h>
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	"github.com/msteinert/pam/v2"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
)

// Provider checks credentials through PAM. It is safe for concurrent use:
// each logon has its own PAM transaction.
type Provider struct {
	cfg  Config
	kept sync.Map // service → *pam.Transaction, never used (Config.KeepModulesLoaded)
}

var (
	_ identity.Provider      = (*Provider)(nil)
	_ identity.SessionOpener = (*Provider)(nil)
)

// New returns a provider; zero fields of cfg take their defaults.
func New(cfg Config) *Provider { return &Provider{cfg: cfg.withDefaults()} }

// Available reports whether this build can check credentials through PAM.
func Available() bool { return pam.CheckPamHasStartConfdir() }

// Logon runs pam_authenticate then pam_acct_mgmt in the logon type's
// service — the exact path of `deskrun diagnose logon` — and maps a failure
// to a catalog reason. The caller zeroes req.Password after it returns.
func (p *Provider) Logon(ctx context.Context, req identity.Request) (*identity.Result, error) {
	tx, res, err := p.logon(ctx, req, false)
	if tx != nil {
		tx.end()
	}
	return res, err
}

// CheckAccount runs only the account stage (no password): does the account
// exist, is it expired, may it use this logon type now. doctor uses it.
func (p *Provider) CheckAccount(ctx context.Context, name identity.Name, t identity.LogonType) (*identity.Result, error) {
	tx, res, err := p.logon(ctx, identity.Request{Name: name, Type: t}, true)
	if tx != nil {
		tx.end()
	}
	return res, err
}

// session is an open PAM session; see OpenSession.
type session struct {
	mu  sync.Mutex
	tx  *transaction
	res *identity.Result
}

func (s *session) Result() *identity.Result { return s.res }

// Close closes the PAM session, deletes the credentials and ends the
// transaction. It is idempotent.
func (s *session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tx == nil {
		return nil
	}
	tx := s.tx
	s.tx = nil
	err := tx.t.CloseSession(pam.Silent)
	_ = tx.t.SetCred(pam.Silent | pam.DeleteCred)
	tx.end()
	if err != nil {
		return fmt.Errorf("close pam session: %w", err)
	}
	return nil
}

// OpenSession logs the user on (as Logon), establishes credentials and
// opens a PAM session for a run. Close the session when the run ends.
func (p *Provider) OpenSession(ctx context.Context, req identity.Request) (identity.Session, error) {
	tx, res, err := p.logon(ctx, req, false)
	if err != nil {
		if tx != nil {
			tx.end()
		}
		return nil, err
	}
	if err := tx.t.SetCred(pam.Silent | pam.EstablishCred); err != nil {
		tx.end()
		return nil, p.fail(identity.ReasonPamStackError, &deskrun.ProviderResult{Name: "pam", Stage: "setcred", Result: pamResult(err)})
	}
	if err := tx.t.OpenSession(pam.Silent); err != nil {
		tx.end()
		return nil, p.fail(identity.ReasonPamStackError, &deskrun.ProviderResult{Name: "pam", Stage: "open_session", Result: pamResult(err)})
	}
	return &session{tx: tx, res: res}, nil
}

type transaction struct {
	t *pam.Transaction
}

// keepLoaded opens, once per service, a PAM handle that is never used: it
// holds the service's modules loaded (see Config.KeepModulesLoaded). It
// authenticates no one and its conversation refuses every prompt.
func (p *Provider) keepLoaded(service string) {
	if !p.cfg.KeepModulesLoaded {
		return
	}
	if _, ok := p.kept.Load(service); ok {
		return
	}
	t, err := pam.StartConfDir(service, "", refuseAll{}, p.cfg.Stack.PAMDir)
	if err != nil {
		return // the logon itself reports what is wrong
	}
	if _, dup := p.kept.LoadOrStore(service, t); dup {
		_ = t.End()
	}
}

// refuseAll is the conversation of a handle that must never prompt.
type refuseAll struct{}

func (refuseAll) RespondPAM(pam.Style, string) (string, error) { return "", errRefused }

func (tx *transaction) end() { _ = tx.t.End() }

// conversation answers PAM for one logon.
type conversation struct {
	password string // aliases the caller's buffer: zeroing it zeroes this
	user     string
	answered bool
	msgs     []string
	pin      bool // a module asked for a smart-card PIN
	extra    bool // a module asked for a second secret (OTP, new password)
}

var errRefused = errors.New("prompt refused")

func (c *conversation) RespondPAM(s pam.Style, msg string) (string, error) {
	switch s {
	case pam.PromptEchoOff:
		if reSmartCard.MatchString(msg) {
			// Never send the password as a PIN: a card locks after a few tries.
			c.pin = true
			return "", errRefused
		}
		if c.answered || c.password == "" {
			c.extra = true
			return "", errRefused
		}
		c.answered = true
		return c.password, nil
	case pam.PromptEchoOn:
		return c.user, nil
	case pam.ErrorMsg, pam.TextInfo:
		if m := strings.TrimSpace(msg); m != "" {
			c.msgs = append(c.msgs, m)
		}
		return "", nil
	}
	return "", errRefused
}

// logon is Logon, CheckAccount and OpenSession's common path. It returns
// the open transaction on success (and on failure when one was started).
func (p *Provider) logon(ctx context.Context, req identity.Request, accountOnly bool) (*transaction, *identity.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	raw := req.Name.Raw
	if raw == "" {
		raw = req.Name.String()
	}
	name, err := identity.ParseNameOn(raw, p.cfg.Join.State, p.cfg.Join.Domain)
	if err != nil {
		return nil, nil, p.stamp(err)
	}
	if !accountOnly {
		if err := identity.CheckPassword(req.Password); err != nil {
			return nil, nil, p.stamp(err)
		}
	}
	lt, err := identity.ParseLogonType(string(req.Type))
	if err != nil {
		return nil, nil, err
	}
	svcFile := p.cfg.Stack.ServiceFile(lt)
	if _, err := os.Stat(svcFile); err != nil {
		// Checked before pam_start: in /etc/pam.d an unknown service
		// silently becomes "other", which on Debian includes common-auth.
		e := p.fail(identity.ReasonPamServiceMissing, &deskrun.ProviderResult{Name: "pam", Stage: "start",
			Detail: "service file " + svcFile + " not found"})
		e.Message = fmt.Sprintf("The PAM service %s is not installed (%s is missing); no logon was attempted.", ServiceName(lt), svcFile)
		if p.cfg.Stack.PAMDir != DefaultStack().PAMDir {
			e.Resolution = fmt.Sprintf("Install deskrun's PAM services: `deskrun agent install-pam --pam-dir %s` (as root), then `deskrun doctor`.", p.cfg.Stack.PAMDir)
		}
		return nil, nil, e
	}
	p.keepLoaded(ServiceName(lt))
	pamUser := name.User
	if !name.LocalTo(p.cfg.Hostname) {
		pamUser = name.Raw // SSSD and winbind parse their own forms
	}
	c := &conversation{user: pamUser}
	if len(req.Password) > 0 {
		c.password = unsafe.String(&req.Password[0], len(req.Password))
	}
	// Modules may keep thread-local state between the calls of one
	// transaction; keep it on one OS thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t, err := pam.StartConfDir(ServiceName(lt), pamUser, c, p.cfg.Stack.PAMDir)
	if err != nil {
		return nil, nil, p.fail(identity.ReasonPamStackError, &deskrun.ProviderResult{Name: "pam", Stage: "start", Result: pamResult(err)})
	}
	tx := &transaction{t: t}
	if !accountOnly {
		if err := t.Authenticate(pam.DisallowNullAuthtok); err != nil {
			return tx, nil, p.classify(ctx, name, pamUser, lt, "authenticate", err, c)
		}
	}
	if err := t.AcctMgmt(pam.DisallowNullAuthtok); err != nil {
		return tx, nil, p.classify(ctx, name, pamUser, lt, "acct_mgmt", err, c)
	}
	if u, err := t.GetItem(pam.User); err == nil && u != "" {
		pamUser = u
	}
	id, ok, err := lookupIdentity(pamUser)
	if err != nil || !ok {
		return tx, nil, p.fail(identity.ReasonNoSuchUser, &deskrun.ProviderResult{Name: "pam", Stage: "getpwnam",
			Detail: "PAM accepted the user but NSS cannot resolve it"})
	}
	return tx, &identity.Result{Identity: id, Warnings: warningsFrom(c.msgs)}, nil
}

func pamResult(err error) string {
	var pe pam.Error
	if errors.As(err, &pe) {
		return PAMName(int(pe))
	}
	return err.Error()
}

func (p *Provider) stamp(err error) error { return identity.Machine(p.cfg.Machine).Stamp(err) }

func (p *Provider) fail(reason string, pr *deskrun.ProviderResult) *deskrun.Error {
	return identity.Machine(p.cfg.Machine).Fail(reason, pr)
}

// classify turns a PAM failure into a catalog reason. PAM's codes are
// coarse (a wrong password, a locked password, a faillock lockout and a
// nologin file are all PAM_AUTH_ERR), so the evidence is, in order: the
// conversation, NSS, the nologin file, the shadow entry, the faillock
// tally, for PAM_PERM_DENIED the probe services, and for directory
// accounts refused by pam_sss the directory itself (Config.Directory).
func (p *Provider) classify(ctx context.Context, name identity.Name, pamUser string, lt identity.LogonType, stage string, err error, c *conversation) *deskrun.Error {
	code := -1
	var pe pam.Error
	if errors.As(err, &pe) {
		code = int(pe)
	}
	pr := &deskrun.ProviderResult{Name: "pam", Stage: stage, Result: PAMName(code)}
	var evidence []string
	fail := func(reason string) *deskrun.Error {
		pr.Detail = strings.Join(append(append([]string{}, c.msgs...), evidence...), "; ")
		return p.fail(reason, pr)
	}
	if c.pin || anyMatch(reSmartCard, c.msgs) {
		evidence = append(evidence, "a module asked for a smart card or PIN")
		return fail(identity.ReasonSmartCardRequired)
	}
	if anyMatch(reLocked, c.msgs) || code == codeMaxtries {
		return fail(identity.ReasonAccountLockedOut)
	}
	switch code {
	case codeUserUnknown:
		return p.unknownUser(ctx, name, pamUser, pr, c)
	case codeAuthinfoUnavail, codeCredInsufficient:
		if os.Geteuid() != 0 {
			evidence = append(evidence, "the agent is not root")
			return fail(identity.ReasonAgentNotPrivileged)
		}
		if code == codeAuthinfoUnavail {
			if _, ok := p.directoryName(name, pamUser); ok && p.directoryStack() {
				// pam_sss says so when SSSD itself does not answer; an
				// offline domain gives cached logons or PAM_PERM_DENIED.
				evidence = append(evidence, "pam_sss: SSSD on this machine does not answer (is sssd running?)")
				e := fail(identity.ReasonNoLogonServers)
				e.Message = "SSSD on this machine does not answer, so no domain account can log on: start sssd (`sssd -D`, or `systemctl start sssd`) and check `sssctl domain-status DOMAIN`."
				return e
			}
			return fail(identity.ReasonNoLogonServers)
		}
		return fail(identity.ReasonPamStackError)
	case codeSystemErr:
		// pam_sss with cache_credentials = false and the domain offline.
		if de, ev := p.askDirectory(ctx, name, pamUser); de != nil && de.Reason == identity.ReasonNoLogonServers {
			return p.fromDirectory(de, pr, c.msgs)
		} else if ev != "" {
			evidence = append(evidence, ev)
		}
	case codeAcctExpired:
		return fail(identity.ReasonAccountExpired)
	case codeNewAuthtokReqd, codeAuthtokExpired:
		// pam_sss says "Password expired" for a forced change too.
		if de, _ := p.askDirectory(ctx, name, pamUser); de != nil &&
			(de.Reason == identity.ReasonPasswordMustChange || de.Reason == identity.ReasonPasswordExpired) {
			return p.fromDirectory(de, pr, c.msgs)
		}
		switch {
		case anyMatch(reAdminForce, c.msgs):
			return fail(identity.ReasonPasswordMustChange)
		case anyMatch(rePwExpired, c.msgs) || code == codeAuthtokExpired:
			return fail(identity.ReasonPasswordExpired)
		}
		if sh := readShadow(p.cfg.ShadowFile, pamUser); sh.found && sh.lastChg == 0 {
			evidence = append(evidence, "shadow: last change 0 (chage -d 0)")
			return fail(identity.ReasonPasswordMustChange)
		}
		return fail(identity.ReasonPasswordExpired)
	case codePermDenied:
		if stage == "acct_mgmt" {
			if p.probeDenies("access", lt, pamUser) {
				evidence = append(evidence, "pam_access denies in "+p.cfg.Stack.AccessFile(lt))
				return fail(identity.ReasonLogonTypeNotGranted)
			}
			if p.probeDenies("time", lt, pamUser) {
				evidence = append(evidence, "pam_time denies now in "+p.cfg.Stack.TimeFile(lt))
				return fail(identity.ReasonInvalidLogonHours)
			}
		}
		if _, dir := p.directoryName(name, pamUser); dir && p.directoryStack() {
			if _, ok, _ := lookupIdentity(pamUser); !ok {
				return p.unknownUser(ctx, name, pamUser, pr, c)
			}
			de, ev := p.askDirectory(ctx, name, pamUser)
			if de != nil {
				return p.fromDirectory(de, pr, c.msgs)
			}
			if ev != "" {
				evidence = append(evidence, ev)
			}
			if stage == "authenticate" && p.cfg.Directory != nil && strings.HasPrefix(ev, "directory: nothing in") {
				// At authenticate pam_sss (krb5) denies for the account
				// states the directory just said are not set, or when
				// SSSD is offline without cached credentials: it is
				// offline, even though the DC answers us (SSSD retries
				// every 60-90 s by itself).
				evidence = append(evidence, "pam_sss refused a usable account: SSSD is offline and has no cached credentials for it")
				e := fail(identity.ReasonNoLogonServers)
				e.Message = "SSSD is offline (it has not reached the domain since the directory came back) and has no cached credentials for this user; it goes back online by itself within about 90 s."
				return e
			}
			// pam_sss gives PAM_AUTH_ERR for a wrong password: this is
			// something else it does not name.
			evidence = append(evidence, "pam_sss refused without saying why: the account is disabled, expired, locked out or outside its logon hours, "+
				"or SSSD is offline without cached credentials for it (configure the agent's directory so deskrun can tell)")
			return fail(identity.ReasonAccountRestriction)
		}
		fallthrough
	case codeAuthErr:
		id, ok, _ := lookupIdentity(pamUser)
		if !ok {
			return p.unknownUser(ctx, name, pamUser, pr, c)
		}
		if code == codeAuthErr {
			// A smart-card account's password is random: every one is wrong.
			if de, _ := p.askDirectory(ctx, name, pamUser); de != nil && de.Reason == identity.ReasonSmartCardRequired {
				return p.fromDirectory(de, pr, c.msgs)
			}
		}
		if stage == "authenticate" && id.UID != 0 && fileExists(p.cfg.Stack.NologinFile) {
			evidence = append(evidence, "nologin file "+p.cfg.Stack.NologinFile+" exists")
			return fail(identity.ReasonAccountRestriction)
		}
		if stage == "acct_mgmt" {
			if !loginShell(p.cfg.ShellsFile, id.Shell) {
				evidence = append(evidence, "shell "+id.Shell+" is not in "+p.cfg.ShellsFile)
			}
			return fail(identity.ReasonAccountRestriction)
		}
		if sh := readShadow(p.cfg.ShadowFile, pamUser); sh.found && (sh.locked || sh.noPasswd) {
			evidence = append(evidence, "shadow: password locked")
			return fail(identity.ReasonAccountDisabled)
		}
		if n, locked := faillockState(p.cfg.Stack.FaillockDir, pamUser, p.cfg.Stack.Deny, p.cfg.Stack.UnlockTime, p.cfg.Now()); locked {
			evidence = append(evidence, fmt.Sprintf("faillock: %d failures, deny=%d", n, p.cfg.Stack.Deny))
			return fail(identity.ReasonAccountLockedOut)
		}
		return fail(identity.ReasonWrongPassword)
	case codeConvErr:
		if c.extra {
			evidence = append(evidence, "a module asked for more than one secret (one-time code or new password)")
			return fail(identity.ReasonAccountRestriction)
		}
	}
	return fail(identity.ReasonPamStackError)
}

// unknownUser decides between NoSuchUser and UserNotPropagated: a domain
// name on a joined machine that NSS cannot resolve has not reached the
// machine (yet); anything else does not exist. With Config.Directory the
// directory decides: it has no such account (NoSuchUser), it has one that
// NSS does not see (UserNotPropagated), or it cannot be reached
// (NoLogonServers: SSSD never saw the user and the domain is offline).
func (p *Provider) unknownUser(ctx context.Context, name identity.Name, pamUser string, pr *deskrun.ProviderResult, c *conversation) *deskrun.Error {
	pr.Detail = strings.Join(c.msgs, "; ")
	joined := p.cfg.Join.State != "" && p.cfg.Join.State != deskrun.JoinLocal
	if name.IsDomainForm(p.cfg.Hostname) && joined {
		de, ev := p.askDirectory(ctx, name, pamUser)
		switch {
		case de != nil && (de.Reason == identity.ReasonNoSuchUser || de.Reason == identity.ReasonNoLogonServers):
			e := p.fromDirectory(de, pr, c.msgs)
			if de.Reason == identity.ReasonNoLogonServers {
				e.Message = "SSSD does not know this user and the directory cannot be reached to look it up."
			}
			return e
		case de != nil:
			pr.Detail = strings.Join(append(append([]string{}, c.msgs...), "directory: the account exists ("+de.Reason+")"), "; ")
		case ev != "" && p.cfg.Directory != nil:
			pr.Detail = strings.Join(append(append([]string{}, c.msgs...), ev), "; ")
		}
		return p.fail(identity.ReasonUserNotPropagated, pr)
	}
	e := p.fail(identity.ReasonNoSuchUser, pr)
	if name.IsDomainForm(p.cfg.Hostname) {
		e.Resolution += "\n" + identity.ExpectedForm(p.cfg.Join.State, p.cfg.Join.Domain)
	}
	return e
}

// probeDenies runs the account stage through the one-module probe service
// of module (see Stack.probeDir). A missing probe says nothing.
func (p *Provider) probeDenies(module string, lt identity.LogonType, user string) bool {
	dir := p.cfg.Stack.probeDir(module)
	if !fileExists(dir + "/" + ServiceName(lt)) {
		return false
	}
	t, err := pam.StartConfDir(ServiceName(lt), user, &conversation{user: user}, dir)
	if err != nil {
		return false
	}
	defer t.End()
	return errors.Is(t.AcctMgmt(pam.Silent), pam.ErrPermDenied)
}

// lookupIdentity resolves user through NSS (getpwnam_r, getgrouplist):
// the same sources the process that runs the flow will see.
func lookupIdentity(user string) (identity.Identity, bool, error) {
	cname := C.CString(user)
	defer C.free(unsafe.Pointer(cname))
	var pwd C.struct_passwd
	var res *C.struct_passwd
	buf := make([]byte, 4096)
	for {
		rc := C.getpwnam_r(cname, &pwd, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &res)
		if rc == C.ERANGE && len(buf) < 1<<20 {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if rc != 0 {
			return identity.Identity{}, false, fmt.Errorf("getpwnam_r: %w", syscallErr(int(rc)))
		}
		break
	}
	if res == nil {
		return identity.Identity{}, false, nil
	}
	id := identity.Identity{
		Username: C.GoString(pwd.pw_name),
		UID:      uint32(pwd.pw_uid),
		GID:      uint32(pwd.pw_gid),
		Home:     C.GoString(pwd.pw_dir),
		Shell:    C.GoString(pwd.pw_shell),
	}
	n := C.int(32)
	for {
		groups := make([]C.gid_t, n)
		got := n
		rc := C.getgrouplist(pwd.pw_name, pwd.pw_gid, &groups[0], &got)
		if rc == -1 && got > n && got < 1<<16 {
			n = got
			continue
		}
		if rc == -1 {
			return id, true, errors.New("getgrouplist: too many groups")
		}
		id.Groups = make([]uint32, 0, int(got))
		for _, g := range groups[:got] {
			id.Groups = append(id.Groups, uint32(g))
		}
		break
	}
	runtime.KeepAlive(buf)
	return id, true, nil
}
