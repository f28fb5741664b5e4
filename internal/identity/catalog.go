package identity

import (
	"errors"
	"sort"
	"strconv"
	"strings"

	"github.com/deskrun/deskrun"
)

// Entry is one row of the failure catalog.
//
// Reason is the key. For identity failures Code is WindowsIdentityIncorrect
// (the code users of the commercial product already search for) and Reason
// says why; for every other code, Reason == Code.
type Entry struct {
	Reason      string   `json:"reason"`
	Code        string   `json:"code"`
	Category    string   `json:"category"`         // identity, warning, agent, run, queue, machine, request
	Symbol      string   `json:"symbol,omitempty"` // NTSTATUS symbol, STATUS_LOGON_TYPE_NOT_GRANTED
	Status      uint32   `json:"-"`                // NTSTATUS; see StatusHex, StatusDecimal
	Win32       int      `json:"win32,omitempty"`  // Win32 error (ERROR_*), e.g. 1385
	ADData      string   `json:"ad_data,omitempty"`
	PAM         []string `json:"pam,omitempty"` // PAM results deskrun maps here (with the stage, see docs/identity.md)
	HTTP        int      `json:"http,omitempty"`
	Message     string   `json:"message"`
	Resolution  string   `json:"resolution"`                   // on Linux, with the commands
	Windows     string   `json:"resolution_windows,omitempty"` // the Windows equivalent
	Retryable   bool     `json:"retryable"`
	Definitive  bool     `json:"definitive"`            // stop every use of the credential
	Schedulable bool     `json:"schedulable,omitempty"` // will work later without any change (logon hours)
	Aliases     []string `json:"aliases,omitempty"`     // other names of the same code
}

// StatusHex is the NTSTATUS as Windows prints it, or "".
func (e Entry) StatusHex() string {
	if e.Status == 0 {
		return ""
	}
	return deskrun.FormatStatus(e.Status)
}

// StatusDecimal is the NTSTATUS as a signed decimal (what Power Automate
// puts in error.code), or 0.
func (e Entry) StatusDecimal() int64 { return int64(int32(e.Status)) }

// Identity reasons that code refers to by name.
const (
	ReasonWrongPassword         = "WrongPassword"
	ReasonNoSuchUser            = "NoSuchUser"
	ReasonUserNotPropagated     = "UserNotPropagated"
	ReasonAccountDisabled       = "AccountDisabled"
	ReasonAccountLockedOut      = "AccountLockedOut"
	ReasonAccountExpired        = "AccountExpired"
	ReasonPasswordExpired       = "PasswordExpired"
	ReasonPasswordMustChange    = "PasswordMustChange"
	ReasonLogonTypeNotGranted   = "LogonTypeNotGranted"
	ReasonInvalidLogonHours     = "InvalidLogonHours"
	ReasonAccountRestriction    = "AccountRestriction"
	ReasonInvalidWorkstation    = "InvalidWorkstation"
	ReasonNoLogonServers        = "NoLogonServers"
	ReasonSmartCardRequired     = "SmartCardRequired"
	ReasonUpnFormatInvalid      = "UpnFormatInvalid"
	ReasonEmptyPassword         = "EmptyPassword"
	ReasonPasswordFormatInvalid = "PasswordFormatInvalid"

	// Warnings carried by a successful logon.
	ReasonPasswordExpiresSoon = "PasswordExpiresSoon"
	ReasonCachedCredentials   = "CachedCredentials"
	ReasonLockoutImminent     = "LockoutImminent"

	// The agent's own logon machinery.
	ReasonPamServiceMissing   = "PamServiceMissing"
	ReasonPamStackError       = "PamStackError"
	ReasonAgentNotPrivileged  = "AgentNotPrivileged"
	ReasonProviderUnavailable = "LogonProviderUnavailable"
	ReasonDoctorFailed        = "DoctorFailed"

	// The agent's directory (LDAP) settings.
	ReasonDirectoryConfigInvalid = "DirectoryConfigInvalid"
)

// Catalog returns every entry, in table order (identity first). The slice
// is a copy; changing it changes nothing.
func Catalog() []Entry {
	out := make([]Entry, len(catalog))
	copy(out, catalog)
	return out
}

var byReason = func() map[string]int {
	m := make(map[string]int, len(catalog))
	for i, e := range catalog {
		if _, dup := m[strings.ToLower(e.Reason)]; dup {
			panic("identity: duplicate catalog reason " + e.Reason)
		}
		m[strings.ToLower(e.Reason)] = i
		for _, a := range e.Aliases {
			m[strings.ToLower(a)] = i
		}
	}
	return m
}()

// Lookup finds an entry by reason (or alias), case-insensitively.
func Lookup(reason string) (Entry, bool) {
	i, ok := byReason[strings.ToLower(strings.TrimSpace(reason))]
	if !ok {
		return Entry{}, false
	}
	return catalog[i], true
}

// Fail builds the *deskrun.Error for reason, filled from the catalog, with
// the provider's raw result attached. An unknown reason is a programming
// error; it still yields a usable error (InternalError) rather than a panic
// inside a logon.
func Fail(reason string, provider *deskrun.ProviderResult) *deskrun.Error {
	e, ok := Lookup(reason)
	if !ok {
		return &deskrun.Error{Code: deskrun.CodeInternal, Reason: reason, Provider: provider,
			Message: "deskrun has no catalog entry for this failure"}
	}
	err := &deskrun.Error{
		Code:       e.Code,
		Reason:     e.Reason,
		Message:    e.Message,
		Provider:   provider,
		Resolution: e.Resolution,
		Retryable:  e.Retryable,
		Definitive: e.Definitive,
	}
	err.SetStatus(e.Status)
	return err
}

// Explain finds the entries a query names. It accepts a reason or code
// name, an NTSTATUS as hex (0xC000015B), signed decimal (-1073741477) or
// unsigned decimal (3221225819), a Win32 error (1385), an AD data code
// (52e, "data 52e"), a PAM result (PAM_PERM_DENIED, PERM_DENIED) or an
// NTSTATUS symbol. exact is false when nothing matched; the entries are
// then the nearest names, best first, to offer as suggestions.
func Explain(query string) (entries []Entry, exact bool) {
	q := strings.TrimSpace(query)
	if q == "" {
		return nil, false
	}
	lq := strings.ToLower(q)
	lq = strings.TrimPrefix(lq, "data ")
	seen := map[int]bool{}
	add := func(i int) {
		if !seen[i] {
			seen[i] = true
			entries = append(entries, catalog[i])
		}
	}
	if i, ok := byReason[lq]; ok {
		add(i)
	}
	pamName := strings.ToUpper(lq)
	if !strings.HasPrefix(pamName, "PAM_") {
		pamName = "PAM_" + pamName
	}
	symbol := strings.ToUpper(lq)
	if !strings.HasPrefix(symbol, "STATUS_") && !strings.Contains(symbol, "_E_") {
		symbol = "STATUS_" + symbol
	}
	status, isStatus := deskrun.ParseStatus(q)
	small, smallErr := strconv.Atoi(q)
	for i, e := range catalog {
		switch {
		case isStatus && e.Status != 0 && e.Status == status:
			add(i)
		case smallErr == nil && small > 0 && small < 65536 && e.Win32 == small:
			add(i)
		case e.ADData != "" && e.ADData == lq:
			add(i)
		case e.Symbol != "" && (strings.EqualFold(e.Symbol, q) || e.Symbol == symbol):
			add(i)
		case strings.EqualFold(e.Code, q) && e.Code == e.Reason:
			add(i)
		default:
			for _, p := range e.PAM {
				if p == pamName {
					add(i)
				}
			}
		}
	}
	if len(entries) > 0 {
		return entries, true
	}
	return nearest(lq, 5), false
}

// nearest returns the n entries whose names are closest to q (edit
// distance on the lower-cased reason, then containment), for "did you
// mean". Numbers get the entries with the closest NTSTATUS.
func nearest(q string, n int) []Entry {
	type scored struct {
		i int
		d int
	}
	var s []scored
	if v, ok := deskrun.ParseStatus(q); ok {
		for i, e := range catalog {
			if e.Status == 0 {
				continue
			}
			d := int64(e.Status) - int64(v)
			if d < 0 {
				d = -d
			}
			if d > 1<<20 {
				d = 1 << 20
			}
			s = append(s, scored{i, int(d)})
		}
	} else {
		for i, e := range catalog {
			r := strings.ToLower(e.Reason)
			d := levenshtein(q, r)
			if strings.Contains(r, q) || strings.Contains(q, r) {
				d = min(d, len(r)-len(q))
				if d < 0 {
					d = -d
				}
				d /= 4
			}
			s = append(s, scored{i, d})
		}
	}
	sort.SliceStable(s, func(a, b int) bool { return s[a].d < s[b].d })
	out := make([]Entry, 0, n)
	for _, x := range s[:min(n, len(s))] {
		out = append(out, catalog[x.i])
	}
	return out
}

func levenshtein(a, b string) int {
	if len(a) > 64 {
		a = a[:64]
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Machine is the machine a provider logs users on: its failures name it.
type Machine string

// Fail is Fail with the error's Machine set.
func (m Machine) Fail(reason string, provider *deskrun.ProviderResult) *deskrun.Error {
	e := Fail(reason, provider)
	e.Machine = string(m)
	return e
}

// Stamp sets the Machine of a *deskrun.Error in err's chain (when m is
// known) and returns err.
func (m Machine) Stamp(err error) error {
	var e *deskrun.Error
	if m != "" && errors.As(err, &e) {
		e.Machine = string(m)
	}
	return err
}
