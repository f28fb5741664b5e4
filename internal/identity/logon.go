package identity

import (
	"context"
	"strings"

	"github.com/deskrun/deskrun"
)

// LogonType is what a connection's user will do on the machine. Each one
// has its own PAM service (deskrun-<type>), so an administrator can grant
// or deny it separately, and "logon type not granted" is a real outcome.
type LogonType string

const (
	// LogonInteractive is an unattended desktop session.
	LogonInteractive LogonType = "interactive"
	// LogonBatch runs a flow with no desktop.
	LogonBatch LogonType = "batch"
	// LogonNetwork only checks the credentials (connection tests).
	LogonNetwork LogonType = "network"
)

// LogonTypes lists every logon type, in a stable order.
func LogonTypes() []LogonType { return []LogonType{LogonInteractive, LogonBatch, LogonNetwork} }

// ParseLogonType parses "interactive", "batch" or "network" (any case).
// The empty string is interactive, the default of a connection.
func ParseLogonType(s string) (LogonType, error) {
	switch t := LogonType(strings.ToLower(strings.TrimSpace(s))); t {
	case "":
		return LogonInteractive, nil
	case LogonInteractive, LogonBatch, LogonNetwork:
		return t, nil
	}
	return "", &deskrun.Error{Code: deskrun.CodeInvalid, Field: "logon_type",
		Message: "unknown logon type; use interactive, batch or network"}
}

// MaxPasswordBytes is the longest password a provider is handed. Longer
// input is refused before any logon attempt (reason PasswordFormatInvalid):
// no real password is that long (Windows stops at 256 characters), and a
// bounded size keeps a pasted file or a hostile client from reaching PAM.
const MaxPasswordBytes = 4096

// Request is one logon attempt. The caller owns Password and must zero it
// when Logon returns; providers never copy it into an error, a log line or
// a long-lived buffer.
type Request struct {
	Name     Name
	Password []byte
	Type     LogonType
}

// CheckPassword refuses a password that cannot be right before it reaches a
// provider, where it would count as a failed logon (and towards a lockout).
func CheckPassword(pw []byte) error {
	switch {
	case len(pw) == 0:
		return Fail(ReasonEmptyPassword, nil)
	case len(pw) > MaxPasswordBytes:
		e := Fail(ReasonPasswordFormatInvalid, nil)
		e.Message = "The password is longer than 4096 bytes; no logon was attempted."
		return e
	}
	for _, c := range pw {
		switch c {
		case 0:
			e := Fail(ReasonPasswordFormatInvalid, nil)
			e.Message = "The password contains a NUL byte, which no logon service can receive; no logon was attempted."
			return e
		case '\n', '\r':
			// A logon prompt ends the password at the line break, so such a
			// password can never have been typed at one.
			e := Fail(ReasonPasswordFormatInvalid, nil)
			e.Message = "The password contains a line break, which no logon prompt can receive; no logon was attempted."
			return e
		}
	}
	return nil
}

// Identity is the operating-system identity a logon resolved to.
type Identity struct {
	Username string   `json:"username"` // as the OS knows it (NSS name)
	UID      uint32   `json:"uid"`
	GID      uint32   `json:"gid"`
	Groups   []uint32 `json:"groups"` // supplementary groups, including GID
	Home     string   `json:"home"`
	Shell    string   `json:"shell"`
}

// Warning is something a successful logon said that an admin should act on
// before it becomes a failure, e.g. PasswordExpiresSoon in 5 days.
type Warning struct {
	Reason  string `json:"reason"`
	Days    int    `json:"days,omitempty"`
	Message string `json:"message"`
}

// Result is a successful logon.
type Result struct {
	Identity Identity  `json:"identity"`
	Warnings []Warning `json:"warnings,omitempty"`
}

// Provider checks credentials on this machine. Every failure is a
// *deskrun.Error built by Fail, with Code WindowsIdentityIncorrect for
// identity failures and the provider's raw result attached.
type Provider interface {
	Logon(ctx context.Context, req Request) (*Result, error)
}

// Session is an open logon session (PAM session, later a Windows logon
// session) that a desktop-flow run lives in. Close is idempotent.
type Session interface {
	Result() *Result
	Close() error
}

// SessionOpener is a Provider that can also open a session for a run.
type SessionOpener interface {
	Provider
	OpenSession(ctx context.Context, req Request) (Session, error)
}
