package identity

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/deskrun/deskrun"
)

// NameKind is the form a username was written in.
type NameKind string

const (
	// KindLocal is ".\user": an account of this machine.
	KindLocal NameKind = "local"
	// KindDomain is "DOMAIN\user". DOMAIN may also be this machine's own
	// name, which makes it local; see Name.LocalTo.
	KindDomain NameKind = "domain"
	// KindUPN is "user@domain".
	KindUPN NameKind = "upn"
	// KindBare is "user": resolved by whatever the machine's NSS says.
	KindBare NameKind = "bare"
)

// Length limits. A user part longer than 256 bytes exceeds LOGIN_NAME_MAX
// on Linux and every directory's limit; a domain longer than 255 bytes is
// not a DNS name.
const (
	MaxUserBytes   = 256
	MaxDomainBytes = 255
)

// Name is a parsed username. Raw is exactly what was typed.
type Name struct {
	Kind   NameKind `json:"kind"`
	Domain string   `json:"domain,omitempty"` // "" for bare, "." for local
	User   string   `json:"user"`
	Raw    string   `json:"raw"`
}

// String renders the name in its canonical form.
func (n Name) String() string {
	switch n.Kind {
	case KindLocal:
		return `.\` + n.User
	case KindDomain:
		return n.Domain + `\` + n.User
	case KindUPN:
		return n.User + "@" + n.Domain
	}
	return n.User
}

// LocalTo reports whether the name designates an account of the machine
// called hostname: ".\user", "user", or "HOST\user" where HOST is the
// machine's short name (case-insensitive, as Windows compares it).
func (n Name) LocalTo(hostname string) bool {
	switch n.Kind {
	case KindLocal, KindBare:
		return true
	case KindDomain:
		short, _, _ := strings.Cut(hostname, ".")
		return short != "" && strings.EqualFold(n.Domain, short)
	}
	return false
}

// IsDomainForm reports whether the name names a directory account
// (DOMAIN\user or user@domain) rather than a local one.
func (n Name) IsDomainForm(hostname string) bool {
	return (n.Kind == KindDomain || n.Kind == KindUPN) && !n.LocalTo(hostname)
}

// ParseName parses a username in any of the four forms. A malformed name
// is refused with a *deskrun.Error of reason UpnFormatInvalid before any
// logon is attempted, so it can never count as a failed logon.
func ParseName(s string) (Name, error) {
	n, why := parseName(s)
	if why != "" {
		return Name{}, nameError(why, "", "")
	}
	return n, nil
}

// ParseNameOn is ParseName for a machine whose join state is known: a
// refusal also says which form this machine expects.
func ParseNameOn(s string, join deskrun.JoinState, domain string) (Name, error) {
	n, why := parseName(s)
	if why != "" {
		return Name{}, nameError(why, join, domain)
	}
	return n, nil
}

func nameError(why string, join deskrun.JoinState, domain string) *deskrun.Error {
	e := Fail(ReasonUpnFormatInvalid, nil)
	e.Message = "The username is not in a form deskrun accepts: " + why + "."
	e.Field = "username"
	if join != "" {
		e.Resolution += "\n" + ExpectedForm(join, domain)
	}
	return e
}

// ExpectedForm says, in one sentence, which username form a machine with
// this join state expects.
func ExpectedForm(join deskrun.JoinState, domain string) string {
	switch join {
	case deskrun.JoinLocal, "":
		return `This machine is not joined to a domain: use a local account, written "user" or ".\user".`
	default:
		d := domain
		if d == "" {
			d = "domain.example"
		}
		nb := strings.ToUpper(strings.SplitN(d, ".", 2)[0])
		return "This machine is joined to " + d + " (" + string(join) + `): use "user@` + strings.ToLower(d) +
			`" or "` + nb + `\user" for directory accounts, ".\user" for local ones.`
	}
}

// parseName returns the parsed name, or why it is malformed (never echoing
// the input, which could be a password typed in the wrong field).
func parseName(s string) (Name, string) {
	if s == "" {
		return Name{}, "the username is empty"
	}
	if len(s) > MaxUserBytes+1+MaxDomainBytes {
		return Name{}, "the username is too long"
	}
	if !utf8.ValidString(s) {
		return Name{}, "the username is not valid UTF-8"
	}
	for _, r := range s {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return Name{}, "the username contains a control character"
		}
	}
	bs := strings.Count(s, `\`)
	at := strings.Count(s, "@")
	if bs+at > 1 {
		return Name{}, `the username has more than one separator (\ or @)`
	}
	n := Name{Raw: s}
	switch {
	case bs == 1:
		d, u, _ := strings.Cut(s, `\`)
		if d == "" {
			return Name{}, `the domain before \ is empty`
		}
		if d == "." {
			n.Kind, n.Domain = KindLocal, "."
		} else {
			if why := checkDomain(d, false); why != "" {
				return Name{}, why
			}
			n.Kind, n.Domain = KindDomain, d
		}
		n.User = u
	case at == 1:
		u, d, _ := strings.Cut(s, "@")
		if d == "" {
			return Name{}, "the domain after @ is empty"
		}
		if why := checkDomain(d, true); why != "" {
			return Name{}, why
		}
		n.Kind, n.Domain, n.User = KindUPN, d, u
	default:
		n.Kind, n.User = KindBare, s
	}
	if why := checkUser(n.User); why != "" {
		return Name{}, why
	}
	return n, ""
}

// userForbidden are characters no directory accepts in an account name
// (Windows' list, plus ':' which splits /etc/passwd fields and '/').
const userForbidden = `"/\[]:;|=,+*?<>`

func checkUser(u string) string {
	switch {
	case u == "":
		return "the user part is empty"
	case len(u) > MaxUserBytes:
		return "the user part is too long"
	case strings.ContainsAny(u, userForbidden):
		return `the user part contains a character that no account name may hold (one of "/\[]:;|=,+*?<>)`
	case strings.HasPrefix(u, "-"):
		return "the user part starts with '-'"
	case strings.HasSuffix(u, "."):
		return "the user part ends with '.'"
	}
	for _, r := range u {
		if unicode.IsSpace(r) {
			return "the user part contains white space"
		}
	}
	return ""
}

// checkDomain accepts a NetBIOS name or a DNS name. dns requires the DNS
// shape (labels separated by single dots).
func checkDomain(d string, dns bool) string {
	if len(d) > MaxDomainBytes {
		return "the domain is too long"
	}
	if strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") || strings.Contains(d, "..") {
		return "the domain has an empty label (a leading, trailing or double dot)"
	}
	for _, r := range d {
		ok := r == '-' || r == '.' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
		if !ok && !(r > utf8.RuneSelf && unicode.IsLetter(r)) {
			return "the domain contains a character that is not a letter, digit, '-', '_' or '.'"
		}
	}
	if dns {
		for _, l := range strings.Split(d, ".") {
			if len(l) > 63 {
				return "a label of the domain is longer than 63 bytes"
			}
			if strings.HasPrefix(l, "-") || strings.HasSuffix(l, "-") {
				return "a label of the domain starts or ends with '-'"
			}
		}
	}
	return ""
}
