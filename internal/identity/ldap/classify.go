package ldap

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/deskrun/deskrun/internal/identity"
)

// adData maps the sub-code Active Directory (and Samba) put in the
// diagnostic of result 49 ("80090308: LdapErr: DSID-0C0903A9, comment:
// AcceptSecurityContext error, data 52e, v1db1") to a reason. The codes
// are Win32 errors in hex: 52e = 1326 ERROR_LOGON_FAILURE, and so on.
var adData = map[string]string{
	"52e": identity.ReasonWrongPassword,
	"525": identity.ReasonNoSuchUser,
	"530": identity.ReasonInvalidLogonHours,
	"531": identity.ReasonInvalidWorkstation,
	"532": identity.ReasonPasswordExpired,
	"533": identity.ReasonAccountDisabled,
	"568": identity.ReasonAccountRestriction,  // ERROR_TOO_MANY_CONTEXT_IDS: too many groups
	"569": identity.ReasonLogonTypeNotGranted, // ERROR_LOGON_TYPE_NOT_GRANTED
	"701": identity.ReasonAccountExpired,
	"773": identity.ReasonPasswordMustChange,
	"775": identity.ReasonAccountLockedOut,
}

var reData = regexp.MustCompile(`\bdata ([0-9a-fA-F]{1,8}),`)

// DataCode extracts AD's sub-code from a bind diagnostic: "52e", or "".
func DataCode(diag string) string {
	if m := reData.FindStringSubmatch(diag); m != nil {
		return strings.ToLower(m[1])
	}
	return ""
}

// ppolicy (draft-behera-ldap-password-policy) errors, as OpenLDAP's
// response control carries them.
const (
	ppPasswordExpired  = 0
	ppAccountLocked    = 1
	ppChangeAfterReset = 2
)

// ppolicyReason maps a ppolicy error to a reason, or "".
func ppolicyReason(code int8) string {
	switch code {
	case ppPasswordExpired:
		return identity.ReasonPasswordExpired
	case ppAccountLocked:
		return identity.ReasonAccountLockedOut
	case ppChangeAfterReset:
		return identity.ReasonPasswordMustChange
	}
	return ""
}

func ppolicyControl(ctls []goldap.Control) *goldap.ControlBeheraPasswordPolicy {
	for _, c := range ctls {
		if pp, ok := c.(*goldap.ControlBeheraPasswordPolicy); ok {
			return pp
		}
	}
	return nil
}

// bindOutcome is what the user's bind said, already mapped.
type bindOutcome struct {
	reason string        // "" on success
	result string        // "49 data 52e", "49 ppolicy accountLocked", "0"
	detail string        // the server's diagnostic
	expire time.Duration // ppolicy: the password expires in this long
}

// classifyBind maps a simple bind's error and response controls. err is
// nil on success; a ppolicy changeAfterReset still fails the logon (the
// bind succeeds but the session may do nothing but change the password).
func classifyBind(err error, ctls []goldap.Control) bindOutcome {
	pp := ppolicyControl(ctls)
	if err == nil {
		if pp != nil && pp.Error == ppChangeAfterReset {
			return bindOutcome{reason: identity.ReasonPasswordMustChange, result: "0 ppolicy changeAfterReset"}
		}
		return bindOutcome{result: "0"}
	}
	var le *goldap.Error
	if !errors.As(err, &le) {
		return bindOutcome{reason: networkReason(err), result: "error", detail: scrub(err.Error())}
	}
	diag := ""
	if le.Err != nil {
		diag = scrub(le.Err.Error())
	}
	res := strconv.Itoa(int(le.ResultCode))
	switch le.ResultCode {
	case goldap.LDAPResultInvalidCredentials:
		if pp != nil && pp.Error >= 0 {
			if r := ppolicyReason(pp.Error); r != "" {
				return bindOutcome{reason: r, result: res + " ppolicy " + ppName(pp.Error), detail: diag}
			}
		}
		code := DataCode(diag)
		if code != "" {
			res += " data " + code
		}
		if r, ok := adData[code]; ok {
			return bindOutcome{reason: r, result: res, detail: diag}
		}
		// No sub-code (OpenLDAP, or a code deskrun does not know): the
		// credentials were refused, and that is all the server said.
		return bindOutcome{reason: identity.ReasonWrongPassword, result: res, detail: diag}
	case goldap.LDAPResultStrongAuthRequired, goldap.LDAPResultConfidentialityRequired:
		return bindOutcome{reason: identity.ReasonDirectoryConfigInvalid, result: res, detail: diag}
	case goldap.LDAPResultInvalidDNSyntax:
		return bindOutcome{reason: identity.ReasonDirectoryConfigInvalid, result: res, detail: diag}
	case goldap.LDAPResultBusy, goldap.LDAPResultUnavailable, goldap.ErrorNetwork:
		return bindOutcome{reason: identity.ReasonNoLogonServers, result: res, detail: diag}
	case goldap.LDAPResultUnwillingToPerform:
		return bindOutcome{reason: identity.ReasonAccountRestriction, result: res, detail: diag}
	}
	return bindOutcome{reason: identity.ReasonDirectoryConfigInvalid, result: res, detail: diag}
}

func ppName(code int8) string {
	if s, ok := goldap.BeheraPasswordPolicyErrorMap[code]; ok {
		// "Account locked" → "accountLocked", as the draft names them
		f := strings.Fields(s)
		for i := range f {
			if i == 0 {
				f[i] = strings.ToLower(f[i])
			} else {
				f[i] = strings.ToUpper(f[i][:1]) + strings.ToLower(f[i][1:])
			}
		}
		return strings.Join(f, "")
	}
	return strconv.Itoa(int(code))
}

// networkReason sorts a transport error: a certificate the agent does not
// trust is a configuration fault, not an outage; everything else (refused,
// reset, timeout, DNS) means no directory server could be reached.
func networkReason(err error) string {
	var (
		unknownCA  x509.UnknownAuthorityError
		hostname   x509.HostnameError
		invalid    x509.CertificateInvalidError
		verifyErr  *tls.CertificateVerificationError
		recordHdr  tls.RecordHeaderError
		alertError tls.AlertError
	)
	switch {
	case errors.As(err, &verifyErr), errors.As(err, &unknownCA), errors.As(err, &hostname),
		errors.As(err, &invalid), errors.As(err, &recordHdr), errors.As(err, &alertError):
		return identity.ReasonDirectoryConfigInvalid
	}
	return identity.ReasonNoLogonServers
}

// dialDetail describes a dial failure for ProviderResult.Detail.
func dialDetail(err error) string {
	var dns *net.DNSError
	switch {
	case errors.As(err, &dns):
		return "dns: " + dns.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout: " + err.Error()
	}
	return err.Error()
}

// scrub keeps a server diagnostic short and printable. Diagnostics never
// hold the password (servers do not echo it), but they are bounded and
// stripped of control characters before they reach an error.
func scrub(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(strings.TrimRight(s, "\x00"))
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
