package ldap

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
)

// userAccountControl and msDS-User-Account-Control-Computed flags
// ([MS-ADTS] 2.2.16).
const (
	uacAccountDisable    = 0x2
	uacLockout           = 0x10
	uacSmartcardRequired = 0x40000
	uacPasswordExpired   = 0x800000
)

// AccountState is what the directory says about an account, read with the
// service account before a bind. Zero values mean "not known".
type AccountState struct {
	DN          string `json:"dn"`
	Username    string `json:"username"` // sAMAccountName, or uid in OpenLDAP
	UPN         string `json:"upn,omitempty"`
	UAC         int64  `json:"user_account_control"`
	UACComputed int64  `json:"user_account_control_computed"`
	// PasswordExpires is msDS-UserPasswordExpiryTimeComputed; zero when the
	// password never expires (or the directory does not say).
	PasswordExpires time.Time `json:"password_expires,omitzero"`
	// BadPwdCount is the DC's count of failed logons since the last
	// success. AD does not replicate it: it is this DC's view, the one
	// the next bind on the same connection is judged by.
	BadPwdCount     int       `json:"bad_pwd_count"`
	BadPasswordTime time.Time `json:"bad_password_time,omitzero"`
	UIDNumber       uint32    `json:"uid_number,omitempty"`
	GIDNumber       uint32    `json:"gid_number,omitempty"`
	// LockoutThreshold and LockoutWindow are the policy that applies to
	// the account: its fine-grained password policy (msDS-ResultantPSO) if
	// any, else the domain's. Threshold 0 means accounts never lock.
	LockoutThreshold int           `json:"lockout_threshold"`
	LockoutWindow    time.Duration `json:"lockout_window"`
	// AccountExpires is accountExpires; zero when the account never expires.
	AccountExpires time.Time `json:"account_expires,omitzero"`
	// LogonHours is logonHours: 21 bytes, one bit per hour of the week
	// from Sunday 00:00 UTC (least significant bit first); nil when the
	// attribute is absent (every hour allowed).
	LogonHours []byte `json:"logon_hours,omitempty"`
	// MustChange: pwdLastSet is 0 (must change at next logon).
	MustChange bool `json:"must_change,omitempty"`
}

// Disabled, LockedOut, SmartCardRequired and PasswordExpired read the flags.
func (s AccountState) Disabled() bool          { return s.UAC&uacAccountDisable != 0 }
func (s AccountState) LockedOut() bool         { return (s.UACComputed|s.UAC)&uacLockout != 0 }
func (s AccountState) SmartCardRequired() bool { return s.UAC&uacSmartcardRequired != 0 }
func (s AccountState) PasswordExpired() bool   { return s.UACComputed&uacPasswordExpired != 0 }

// Expired reports whether accountExpires has passed at now.
func (s AccountState) Expired(now time.Time) bool {
	return !s.AccountExpires.IsZero() && !now.Before(s.AccountExpires)
}

// OutsideLogonHours reports whether logonHours forbids a logon at now.
func (s AccountState) OutsideLogonHours(now time.Time) bool {
	if len(s.LogonHours) != 21 {
		return false
	}
	now = now.UTC()
	h := int(now.Weekday())*24 + now.Hour()
	return s.LogonHours[h/8]&(1<<(h%8)) == 0
}

// Failures is the count the next failed logon adds to. AD restarts
// the count at 1 when the last failure is older than the observation
// window, so a stale badPwdCount does not bring the account nearer to a
// lockout.
func (s AccountState) Failures(now time.Time) int {
	if s.LockoutWindow > 0 && !s.BadPasswordTime.IsZero() && now.Sub(s.BadPasswordTime) >= s.LockoutWindow {
		return 0
	}
	return s.BadPwdCount
}

// OneFailureFromLockout reports whether one more failed logon would lock
// the account after at least one failure already: with a threshold of 1
// every logon is "one failure from lockout", and refusing them all would
// make the account unusable rather than safe.
func (s AccountState) OneFailureFromLockout(now time.Time) bool {
	n := s.Failures(now)
	return s.LockoutThreshold > 0 && n > 0 && n >= s.LockoutThreshold-1
}

var userAttrs = []string{
	"sAMAccountName", "uid", "userPrincipalName", "userAccountControl",
	"msDS-User-Account-Control-Computed", "msDS-UserPasswordExpiryTimeComputed",
	"badPwdCount", "badPasswordTime", "uidNumber", "gidNumber", "msDS-ResultantPSO",
	"accountExpires", "logonHours", "pwdLastSet",
}

// errNoEntry: the search found no account for the name.
var errNoEntry = errors.New("no such entry")

// findUser searches the account of a name under the base DN. The filter
// covers AD (userPrincipalName, sAMAccountName) and RFC 2307 directories
// (uid); every value is escaped.
func findUser(conn *goldap.Conn, base string, upn, user string) (*goldap.Entry, error) {
	f := "(|(sAMAccountName=" + goldap.EscapeFilter(user) + ")(uid=" + goldap.EscapeFilter(user) + "))"
	if upn != "" {
		f = "(|(userPrincipalName=" + goldap.EscapeFilter(upn) + ")" + f[2:]
	}
	// Computer accounts (NAME$) are dropped below rather than with
	// (!(objectClass=computer)): OpenLDAP evaluates an unknown class as
	// Undefined, and NOT Undefined matches nothing.
	f = "(&(|(objectClass=user)(objectClass=posixAccount)(objectClass=inetOrgPerson))" + f + ")"
	res, err := conn.Search(goldap.NewSearchRequest(base, goldap.ScopeWholeSubtree, goldap.NeverDerefAliases,
		4, 0, false, f, []string{"userPrincipalName", "objectClass"}, nil))
	if err != nil && !goldap.IsErrorWithCode(err, goldap.LDAPResultSizeLimitExceeded) {
		return nil, err
	}
	var found []*goldap.Entry
	if res != nil {
		for _, e := range res.Entries {
			if !slices.ContainsFunc(e.GetAttributeValues("objectClass"), func(c string) bool { return strings.EqualFold(c, "computer") }) {
				found = append(found, e)
			}
		}
	}
	if len(found) == 0 {
		return nil, errNoEntry
	}
	entry := found[0]
	if len(found) > 1 {
		// A UPN is unique; the same short name in two places is ambiguous.
		entry = nil
		for _, e := range found {
			if upn != "" && strings.EqualFold(e.GetAttributeValue("userPrincipalName"), upn) {
				entry = e
			}
		}
		if entry == nil {
			return nil, fmt.Errorf("%d accounts match the name", len(found))
		}
	}
	// Constructed attributes (msDS-*-Computed, msDS-ResultantPSO) are only
	// returned by a base-scope search of the entry.
	res, err = conn.Search(goldap.NewSearchRequest(entry.DN, goldap.ScopeBaseObject, goldap.NeverDerefAliases,
		1, 0, false, "(objectClass=*)", userAttrs, nil))
	if err != nil {
		return nil, err
	}
	if len(res.Entries) == 0 {
		return nil, errNoEntry
	}
	return res.Entries[0], nil
}

func stateOf(e *goldap.Entry) AccountState {
	s := AccountState{
		DN:          e.DN,
		Username:    first(e.GetAttributeValue("sAMAccountName"), e.GetAttributeValue("uid")),
		UPN:         e.GetAttributeValue("userPrincipalName"),
		UAC:         attrInt(e, "userAccountControl"),
		UACComputed: attrInt(e, "msDS-User-Account-Control-Computed"),
		BadPwdCount: int(attrInt(e, "badPwdCount")),
	}
	s.PasswordExpires = fileTime(attrInt(e, "msDS-UserPasswordExpiryTimeComputed"))
	s.BadPasswordTime = fileTime(attrInt(e, "badPasswordTime"))
	s.AccountExpires = fileTime(attrInt(e, "accountExpires"))
	if b := e.GetRawAttributeValue("logonHours"); len(b) == 21 {
		s.LogonHours = b
	}
	s.MustChange = e.GetAttributeValue("pwdLastSet") == "0"
	if v := attrInt(e, "uidNumber"); v > 0 && v <= math.MaxUint32 {
		s.UIDNumber = uint32(v)
	}
	if v := attrInt(e, "gidNumber"); v > 0 && v <= math.MaxUint32 {
		s.GIDNumber = uint32(v)
	}
	return s
}

// readPolicy fills the lockout policy: the resultant PSO's if the account
// has one, else the domain object's at the base DN.
func readPolicy(conn *goldap.Conn, base string, e *goldap.Entry, s *AccountState) error {
	if pso := e.GetAttributeValue("msDS-ResultantPSO"); pso != "" {
		res, err := conn.Search(goldap.NewSearchRequest(pso, goldap.ScopeBaseObject, goldap.NeverDerefAliases,
			1, 0, false, "(objectClass=*)", []string{"msDS-LockoutThreshold", "msDS-LockoutObservationWindow"}, nil))
		if err == nil && len(res.Entries) == 1 {
			s.LockoutThreshold = int(attrInt(res.Entries[0], "msDS-LockoutThreshold"))
			s.LockoutWindow = interval(attrInt(res.Entries[0], "msDS-LockoutObservationWindow"))
			return nil
		}
		// The service account may not read PSOs: fall back to the domain's.
	}
	res, err := conn.Search(goldap.NewSearchRequest(base, goldap.ScopeBaseObject, goldap.NeverDerefAliases,
		1, 0, false, "(objectClass=*)", []string{"lockoutThreshold", "lockOutObservationWindow"}, nil))
	if err != nil {
		return err
	}
	if len(res.Entries) == 1 {
		s.LockoutThreshold = int(attrInt(res.Entries[0], "lockoutThreshold"))
		s.LockoutWindow = interval(attrInt(res.Entries[0], "lockOutObservationWindow"))
	}
	return nil
}

func attrInt(e *goldap.Entry, name string) int64 {
	v, err := strconv.ParseInt(e.GetAttributeValue(name), 10, 64)
	if err != nil {
		return 0
	}
	return v
}

// fileTime converts a Windows FILETIME (100 ns since 1601) to a time;
// 0 and the "never" value 0x7FFFFFFFFFFFFFFF give the zero time.
func fileTime(ft int64) time.Time {
	if ft <= 0 || ft == math.MaxInt64 {
		return time.Time{}
	}
	const epochDiff = 116444736000000000 // 1601-01-01 to 1970-01-01 in 100 ns
	return time.Unix(0, (ft-epochDiff)*100).UTC()
}

// interval converts an AD interval (negative 100 ns units) to a duration.
func interval(v int64) time.Duration {
	if v < 0 {
		v = -v
	}
	if v > math.MaxInt64/100 {
		return 0
	}
	return time.Duration(v * 100)
}

// daysLeft is the whole days from now until t, rounded down; negative when
// t has passed.
func daysLeft(now, t time.Time) int {
	d := t.Sub(now)
	if d < 0 {
		return -int((-d + 24*time.Hour - 1) / (24 * time.Hour))
	}
	return int(d / (24 * time.Hour))
}

func first(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
