// Package pam is deskrun's Linux logon provider: it checks a connection's
// credentials through PAM, with deskrun's own services (deskrun-interactive,
// deskrun-batch, deskrun-network), and turns PAM's coarse answer (a result
// code, the failing stage, the conversation messages) plus what root can
// read (the shadow entry, the faillock tally) into one precise reason of
// the failure catalog.
//
// The provider needs cgo and Linux-PAM ≥ 1.4 (pam_start_confdir); other
// builds get a stub whose every call fails with LogonProviderUnavailable.
package pam

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/deskrun/deskrun/internal/identity"
)

// Stack says where deskrun's PAM services live and how they are built.
// The same value configures the provider and `deskrun agent install-pam`,
// so they cannot disagree.
type Stack struct {
	// PAMDir holds the service files (pam_start_confdir's directory).
	PAMDir string
	// ConfigDir holds the per-logon-type module configs (access-TYPE.conf,
	// time-TYPE.conf) and the one-module probe services.
	ConfigDir string
	// FaillockDir is pam_faillock's tally directory.
	FaillockDir string
	// NologinFile closes logons for everyone but root while it exists.
	NologinFile string
	// Deny is the number of consecutive failures that locks an account;
	// UnlockTime the seconds it stays locked.
	Deny, UnlockTime int
	// Directory adds the directory's PAM module after pam_unix: "" (local
	// accounts only), "sss" (pam_sss) or "winbind" (pam_winbind).
	Directory string
}

// DefaultStack is the installed layout.
func DefaultStack() Stack {
	return Stack{
		PAMDir:      "/etc/pam.d",
		ConfigDir:   "/etc/deskrun/pam",
		FaillockDir: "/var/run/faillock",
		NologinFile: "/etc/nologin",
		Deny:        5,
		UnlockTime:  600,
	}
}

// InstalledDirectory reads which directory module (pam_sss, pam_winbind)
// the installed service of logon type t loads, so a provider built from
// flags knows it is talking to a directory even when the machine's
// sssd.conf or smb.conf is not where DetectJoin looks. "" means none (or
// no service installed).
func (s Stack) InstalledDirectory(t identity.LogonType) string {
	b, err := os.ReadFile(s.ServiceFile(t))
	if err != nil {
		return ""
	}
	switch {
	case bytes.Contains(b, []byte("pam_sss.so")):
		return "sss"
	case bytes.Contains(b, []byte("pam_winbind.so")):
		return "winbind"
	}
	return ""
}

// ServiceName is the PAM service of a logon type: deskrun-interactive, …
func ServiceName(t identity.LogonType) string { return "deskrun-" + string(t) }

// ServiceFile is the path of a logon type's service file.
func (s Stack) ServiceFile(t identity.LogonType) string {
	return filepath.Join(s.PAMDir, ServiceName(t))
}

// AccessFile and TimeFile are the pam_access and pam_time configs of a
// logon type. Denying a user one logon type is one line in its access file.
func (s Stack) AccessFile(t identity.LogonType) string {
	return filepath.Join(s.ConfigDir, "access-"+string(t)+".conf")
}

func (s Stack) TimeFile(t identity.LogonType) string {
	return filepath.Join(s.ConfigDir, "time-"+string(t)+".conf")
}

// Probe confdirs hold, under the same service name, a stack with only the
// account line of one module. After the account stage says
// PAM_PERM_DENIED, the provider runs the account stage again through each
// probe: the module that still denies is the cause. This asks pam_access and
// pam_time themselves, with the same items and the same config, instead of
// re-implementing their rule languages (groups, netgroups, EXCEPT, day
// ranges), so the answer cannot drift from what PAM decided.
func (s Stack) probeDir(module string) string { return filepath.Join(s.ConfigDir, "probe-"+module) }

func (s Stack) faillockOpts() string {
	o := fmt.Sprintf("deny=%d unlock_time=%d nodelay", s.Deny, s.UnlockTime)
	if s.FaillockDir != "" {
		o = "dir=" + s.FaillockDir + " " + o
	}
	return o
}

// Render returns the service file of a logon type. It is self-contained:
// an @include inside a confdir would be looked up in that confdir, and the
// system's common-* stacks carry no nodelay.
//
// nodelay sits on pam_unix AND pam_faillock: each of them otherwise asks
// for a ~2 s pam_fail_delay on failure, so a wrong password would cost 2 s
// instead of one hash. deskrun never retries a definitive failure, so the
// delay would protect nothing and only slow diagnosis.
func (s Stack) Render(t identity.LogonType) string {
	fl := s.faillockOpts()
	var b strings.Builder
	fmt.Fprintf(&b, "# %s: deskrun's PAM service for %s logons.\n", ServiceName(t), t)
	b.WriteString("# Written by `deskrun agent install-pam`; edit the access and time files, not this one.\n")
	b.WriteString("# Self-contained on purpose: no @include (see docs/identity.md).\n")
	fmt.Fprintf(&b, "auth     requisite  pam_nologin.so file=%s\n", s.NologinFile)
	fmt.Fprintf(&b, "auth     required   pam_faillock.so preauth %s\n", fl)
	switch s.Directory {
	case "sss", "winbind":
		mod := "pam_sss.so use_first_pass ignore_unknown_user"
		if s.Directory == "winbind" {
			mod = "pam_winbind.so use_first_pass"
		}
		b.WriteString("auth     [success=2 default=ignore] pam_unix.so nodelay\n")
		fmt.Fprintf(&b, "auth     [success=1 ignore=ignore default=bad] %s\n", mod)
	default:
		b.WriteString("auth     [success=1 default=bad] pam_unix.so nodelay\n")
	}
	fmt.Fprintf(&b, "auth     [default=die] pam_faillock.so authfail %s\n", fl)
	fmt.Fprintf(&b, "auth     required   pam_faillock.so authsucc %s\n", fl)
	// pam_unix's account stage passes users without a shadow entry
	// (directory users), so the directory module must run after it for
	// every user; it ignores the local ones (user_unknown).
	b.WriteString("account  required   pam_unix.so\n")
	switch s.Directory {
	case "sss":
		b.WriteString("account  [default=bad success=ok user_unknown=ignore] pam_sss.so\n")
	case "winbind":
		b.WriteString("account  [default=bad success=ok user_unknown=ignore] pam_winbind.so\n")
	}
	if s.FaillockDir != "" {
		fmt.Fprintf(&b, "account  required   pam_faillock.so dir=%s\n", s.FaillockDir)
	} else {
		b.WriteString("account  required   pam_faillock.so\n")
	}
	b.WriteString("account  required   pam_shells.so\n")
	fmt.Fprintf(&b, "account  required   pam_access.so accessfile=%s\n", s.AccessFile(t))
	fmt.Fprintf(&b, "account  required   pam_time.so conffile=%s\n", s.TimeFile(t))
	b.WriteString("session  required   pam_unix.so\n")
	return b.String()
}

// Install writes the service file of every logon type and the probe
// services, and creates the access and time files when they do not exist
// yet (an administrator's rules are never overwritten). It returns the
// files it wrote.
func Install(s Stack) ([]string, error) {
	var wrote []string
	write := func(path, body string, keep bool) error {
		if keep {
			if _, err := os.Stat(path); err == nil {
				return nil
			}
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("install pam: %w", err)
		}
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
			return fmt.Errorf("install pam: %w", err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("install pam: %w", err)
		}
		wrote = append(wrote, path)
		return nil
	}
	if s.FaillockDir != "" {
		if err := os.MkdirAll(s.FaillockDir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("install pam: %w", err)
		}
	}
	for _, t := range identity.LogonTypes() {
		svc := ServiceName(t)
		steps := []struct {
			path, body string
			keep       bool
		}{
			{s.ServiceFile(t), s.Render(t), false},
			{s.AccessFile(t), fmt.Sprintf("# pam_access rules for %s logons (first match wins): permission:users:origins\n"+
				"# deny one user:          -:alice:ALL\n# allow only a group:     +:(deskrun-users):ALL then -:ALL:ALL\n+:ALL:ALL\n", t), true},
			{s.TimeFile(t), fmt.Sprintf("# pam_time rules for %s logons: services;ttys;users;times\n"+
				"# e.g. allow alice only on weekdays 08:00-18:00:  *;*;alice;Wk0800-1800\n", t), true},
			{filepath.Join(s.probeDir("access"), svc), fmt.Sprintf("# deskrun probe: which module denied (do not edit)\naccount required pam_access.so accessfile=%s\n", s.AccessFile(t)), false},
			{filepath.Join(s.probeDir("time"), svc), fmt.Sprintf("# deskrun probe: which module denied (do not edit)\naccount required pam_time.so conffile=%s\n", s.TimeFile(t)), false},
		}
		for _, st := range steps {
			if err := write(st.path, st.body, st.keep); err != nil {
				return wrote, err
			}
		}
	}
	return wrote, nil
}
