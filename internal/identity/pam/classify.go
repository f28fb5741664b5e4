package pam

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/deskrun/deskrun/internal/identity"
)

// Config configures the provider.
type Config struct {
	Stack Stack
	// Join is the machine's join state (identity.DetectJoin); it decides
	// between NoSuchUser and UserNotPropagated and which username form the
	// errors recommend.
	Join identity.JoinInfo
	// Hostname makes HOST\user a local name; default os.Hostname.
	Hostname string
	// Machine is copied into every error's Machine field.
	Machine string
	// ShadowFile is read (as root) to tell a disabled account from a wrong
	// password; default /etc/shadow.
	ShadowFile string
	// ShellsFile lists login shells (pam_shells); default /etc/shells.
	ShellsFile string
	// Now is the clock used to read faillock tallies; default time.Now.
	Now func() time.Time
	// Directory, when set, is asked why pam_sss refused a directory
	// account (see AccountStater); nil keeps PAM's own evidence.
	Directory AccountStater
	// KeepModulesLoaded keeps one idle PAM handle per service open for
	// the provider's life, so that the service's modules stay loaded: a
	// logon's pam_start then costs ≈ 0.04 ms instead of the 0.6–0.9 ms of
	// loading them again (BENCHMARKS.md). The service file is still read
	// at every logon, so a changed stack applies at once; a module
	// upgraded on disk applies when the process restarts. The agent sets
	// it; a one-shot command gains nothing from it.
	KeepModulesLoaded bool
}

func (c Config) withDefaults() Config {
	if c.Stack.PAMDir == "" {
		c.Stack = DefaultStack()
	}
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
	}
	if c.ShadowFile == "" {
		c.ShadowFile = "/etc/shadow"
	}
	if c.ShellsFile == "" {
		c.ShellsFile = "/etc/shells"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Join.State == "" {
		c.Join.State = "local-only"
	}
	return c
}

// Linux-PAM result codes (security/_pam_types.h). They are fixed by the
// Linux-PAM ABI; the names are what the catalog and ProviderResult show.
var pamNames = [...]string{
	"PAM_SUCCESS", "PAM_OPEN_ERR", "PAM_SYMBOL_ERR", "PAM_SERVICE_ERR", "PAM_SYSTEM_ERR", "PAM_BUF_ERR",
	"PAM_PERM_DENIED", "PAM_AUTH_ERR", "PAM_CRED_INSUFFICIENT", "PAM_AUTHINFO_UNAVAIL", "PAM_USER_UNKNOWN",
	"PAM_MAXTRIES", "PAM_NEW_AUTHTOK_REQD", "PAM_ACCT_EXPIRED", "PAM_SESSION_ERR", "PAM_CRED_UNAVAIL",
	"PAM_CRED_EXPIRED", "PAM_CRED_ERR", "PAM_NO_MODULE_DATA", "PAM_CONV_ERR", "PAM_AUTHTOK_ERR",
	"PAM_AUTHTOK_RECOVERY_ERR", "PAM_AUTHTOK_LOCK_BUSY", "PAM_AUTHTOK_DISABLE_AGING", "PAM_TRY_AGAIN",
	"PAM_IGNORE", "PAM_ABORT", "PAM_AUTHTOK_EXPIRED", "PAM_MODULE_UNKNOWN", "PAM_BAD_ITEM", "PAM_CONV_AGAIN",
	"PAM_INCOMPLETE",
}

const (
	codeSystemErr        = 4
	codePermDenied       = 6
	codeAuthErr          = 7
	codeCredInsufficient = 8
	codeAuthinfoUnavail  = 9
	codeUserUnknown      = 10
	codeMaxtries         = 11
	codeNewAuthtokReqd   = 12
	codeAcctExpired      = 13
	codeConvErr          = 19
	codeAuthtokExpired   = 27
)

// PAMName names a Linux-PAM result code: 7 → "PAM_AUTH_ERR".
func PAMName(code int) string {
	if code >= 0 && code < len(pamNames) {
		return pamNames[code]
	}
	return "PAM_" + strconv.Itoa(code)
}

// Conversation texts, as Linux-PAM 1.5 modules write them (untranslated:
// the agent runs with LANG=C for PAM).
var (
	reExpireDays = regexp.MustCompile(`(?i)password will expire in (\d+) day`)
	reExpireNow  = regexp.MustCompile(`(?i)password will expire today`)
	reLocked     = regexp.MustCompile(`(?i)(account is locked|locked due to \d+ failed log)`)
	reSmartCard  = regexp.MustCompile(`(?i)(smart ?card|\bPIN\b)`)
	reAdminForce = regexp.MustCompile(`(?i)administrator enforced`)
	rePwExpired  = regexp.MustCompile(`(?i)password expired|password has expired`)
	reCached     = regexp.MustCompile(`(?i)authenticated with cached credentials`)
)

// warningsFrom turns a successful logon's conversation into warnings.
func warningsFrom(msgs []string) []identity.Warning {
	var ws []identity.Warning
	for _, m := range msgs {
		if g := reExpireDays.FindStringSubmatch(m); g != nil {
			d, _ := strconv.Atoi(g[1])
			ws = append(ws, identity.Warning{Reason: identity.ReasonPasswordExpiresSoon, Days: d, Message: strings.TrimSpace(m)})
		} else if reExpireNow.MatchString(m) {
			ws = append(ws, identity.Warning{Reason: identity.ReasonPasswordExpiresSoon, Days: 0, Message: strings.TrimSpace(m)})
		} else if reCached.MatchString(m) {
			ws = append(ws, identity.Warning{Reason: identity.ReasonCachedCredentials, Message: strings.TrimSpace(m)})
		}
	}
	return ws
}

func anyMatch(re *regexp.Regexp, msgs []string) bool {
	for _, m := range msgs {
		if re.MatchString(m) {
			return true
		}
	}
	return false
}

// shadowEntry is the part of an /etc/shadow line the mapping needs.
type shadowEntry struct {
	found    bool
	locked   bool // "!" prefix: usermod -L / passwd -l
	noPasswd bool // "*" or "!*"-style: no password can match
	lastChg  int  // days since 1970; 0 means "must change"; -1 unset
}

// readShadow finds user in a shadow file. Only root can read it; any error
// leaves found false and the caller falls back to WrongPassword.
func readShadow(path, user string) shadowEntry {
	f, err := os.Open(path)
	if err != nil {
		return shadowEntry{}
	}
	defer f.Close()
	prefix := []byte(user + ":")
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, prefix) {
			continue
		}
		fields := strings.Split(string(line), ":")
		e := shadowEntry{found: true, lastChg: -1}
		if len(fields) > 1 {
			pw := fields[1]
			e.locked = strings.HasPrefix(pw, "!")
			e.noPasswd = strings.TrimLeft(pw, "!") == "*"
		}
		if len(fields) > 2 && fields[2] != "" {
			e.lastChg, _ = strconv.Atoi(fields[2])
		}
		return e
	}
	return shadowEntry{}
}

// faillockState reads pam_faillock's tally for user the way pam_faillock
// decides: failures within fail_interval (default 900 s) of the latest one;
// locked while there are at least deny of them and unlock_time has not
// passed since the latest.
//
// A tally file is an array of struct tally {char source[52]; uint16
// reserved; uint16 status; uint64 time;} in host byte order.
func faillockState(dir, user string, deny, unlockTime int, now time.Time) (failures int, locked bool) {
	if dir == "" || deny <= 0 {
		return 0, false
	}
	b, err := os.ReadFile(filepath.Join(dir, user))
	if err != nil {
		return 0, false
	}
	const recSize, failInterval = 64, 900
	var times []uint64
	var latest uint64
	for off := 0; off+recSize <= len(b); off += recSize {
		status := binary.NativeEndian.Uint16(b[off+54:])
		t := binary.NativeEndian.Uint64(b[off+56:])
		if status&1 == 0 {
			continue
		}
		times = append(times, t)
		latest = max(latest, t)
	}
	for _, t := range times {
		if t+failInterval > latest {
			failures++
		}
	}
	locked = failures >= deny && (unlockTime == 0 || int64(latest)+int64(unlockTime) > now.Unix())
	return failures, locked
}

// loginShell reports whether shell is listed in the shells file.
func loginShell(shellsFile, shell string) bool {
	b, err := os.ReadFile(shellsFile)
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist) // unreadable: do not accuse the shell
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) == shell {
			return true
		}
	}
	return false
}

func fileExists(p string) bool {
	if p == "" {
		return false
	}
	_, err := os.Stat(p)
	return err == nil
}
