package deskrun

import (
	"errors"
	"fmt"
	"strconv"
)

// Error codes. Codes are append-only: once shipped, a code keeps its
// meaning forever, because users search for them and scripts match on them.
// The failure catalog (internal/identity) documents every code.
const (
	// Request and resource errors.
	CodeInvalid          = "InvalidRequest"
	CodeMalformedJSON    = "MalformedJSON"
	CodeBodyTooLarge     = "RequestBodyTooLarge"
	CodeNotFound         = "NotFound"
	CodeRouteNotFound    = "RouteNotFound"
	CodeMethodNotAllowed = "MethodNotAllowed"
	CodeConflict         = "Conflict"
	CodeUnauthorized     = "Unauthorized"
	CodeForbidden        = "Forbidden"
	CodeInternal         = "InternalError"
	CodeUnavailable      = "ServiceUnavailable"

	// Enrollment and the agent connection.
	CodeEnrollmentTokenInvalid     = "EnrollmentTokenInvalid"
	CodeEnrollmentTokenExpired     = "EnrollmentTokenExpired"
	CodeEnrollmentTokenUsedUp      = "EnrollmentTokenUsedUp"
	CodeMachineNameTaken           = "MachineNameTaken"
	CodeAgentAuthFailed            = "AgentAuthenticationFailed"
	CodeAgentProtocolTooOld        = "AgentProtocolTooOld"
	CodeServerCertificateUntrusted = "ServerCertificateUntrusted"

	// Orchestration (names follow the commercial product where one exists,
	// so that its users' searches find ours).
	CodeMachineOffline = "MachineOffline"
	CodeAgentLost      = "AgentLost"
	CodeJobCancelled   = "Cancelled"

	// Connections.
	CodeConnectionBroken        = "ConnectionBroken"
	CodeSealedCredentialInvalid = "SealedCredentialInvalid"
	CodeConnectionTestTimeout   = "ConnectionTestTimeout"

	// Desktop flows: the package a maker pushes and the inputs of a run.
	CodeDesktopFlowInvalid         = "DesktopFlowInvalid"         // desktopflow.yaml breaks the schema
	CodeDesktopFlowInputInvalid    = "DesktopFlowInputInvalid"    // undeclared, missing or mistyped input
	CodeDesktopFlowPackageTooLarge = "DesktopFlowPackageTooLarge" // over the compressed or unpacked limit
	CodeDesktopFlowPackageInvalid  = "DesktopFlowPackageInvalid"  // not a safe archive, or not the digest it claims

	// Cloud flows: the definition a maker applies, the inputs of a run, the
	// webhooks that trigger one, and how a step ends.
	CodeFlowInvalid             = "FlowInvalid"             // the YAML breaks the schema or a check; line and column named
	CodeFlowInputInvalid        = "FlowInputInvalid"        // undeclared, missing or mistyped input of a flow run
	CodeWebhookSignatureInvalid = "WebhookSignatureInvalid" // missing, wrong or old X-Deskrun-Signature
	CodeFlowStepFailed          = "FlowStepFailed"          // an http step's request failed or got an unexpected status
	CodeFlowStepInterrupted     = "FlowStepInterrupted"     // the server died while a non-idempotent step was in flight

	// Identity: every logon failure carries this code and a specific Reason.
	CodeWindowsIdentityIncorrect = "WindowsIdentityIncorrect"
)

// Error is deskrun's typed error. It is what the API sends as the body of
// every failed request ({"error": Error}) and what the client rebuilds from
// it, so errors.As works on both sides of the wire. Nothing matches on
// Message text.
//
// Identity failures fill Reason, Status, StatusDecimal, Provider and
// Resolution from the failure catalog; other errors usually carry only
// Code and Message.
type Error struct {
	Code          string          `json:"code"`
	Reason        string          `json:"reason,omitempty"`
	Message       string          `json:"message"`
	Status        string          `json:"status,omitempty"`         // NTSTATUS, "0xC0000071"
	StatusDecimal int64           `json:"status_decimal,omitempty"` // the same, signed decimal: -1073741711
	Provider      *ProviderResult `json:"provider,omitempty"`
	Resolution    string          `json:"resolution,omitempty"`
	Retryable     bool            `json:"retryable"`
	Definitive    bool            `json:"definitive,omitempty"`
	Machine       string          `json:"machine,omitempty"`
	Field         string          `json:"field,omitempty"` // the offending input field, for validation errors
	RequestID     string          `json:"request_id,omitempty"`
}

// ProviderResult is what a logon provider actually returned, kept raw so
// that an admin can check deskrun's reading of it.
type ProviderResult struct {
	Name   string `json:"name"`             // "pam", "ldap", "kerberos"
	Result string `json:"result,omitempty"` // "PAM_NEW_AUTHTOK_REQD", "49 data 532"
	Stage  string `json:"stage,omitempty"`  // "authenticate", "acct_mgmt", "bind"
	Detail string `json:"detail,omitempty"` // provider messages, never a secret
}

func (e *Error) Error() string {
	s := e.Code
	if e.Reason != "" {
		s += " (" + e.Reason + ")"
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// SetStatus fills Status and StatusDecimal from an NTSTATUS value.
func (e *Error) SetStatus(ntstatus uint32) {
	if ntstatus == 0 {
		return
	}
	e.Status = FormatStatus(ntstatus)
	e.StatusDecimal = int64(int32(ntstatus))
}

// FormatStatus renders an NTSTATUS the way Windows tools do: 0xC000006D.
func FormatStatus(ntstatus uint32) string {
	return "0x" + fmt.Sprintf("%08X", ntstatus)
}

// ParseStatus accepts an NTSTATUS as hex (0xC000006D), signed decimal
// (-1073741715) or unsigned decimal (3221225581).
func ParseStatus(s string) (uint32, bool) {
	if len(s) > 2 && (s[:2] == "0x" || s[:2] == "0X") {
		v, err := strconv.ParseUint(s[2:], 16, 32)
		return uint32(v), err == nil
	}
	if v, err := strconv.ParseInt(s, 10, 64); err == nil && v >= -1<<31 && v < 1<<32 {
		return uint32(v), true
	}
	return 0, false
}

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of err if it is (or wraps) an *Error, and
// CodeInternal otherwise.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// IsCode reports whether err is an *Error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}
