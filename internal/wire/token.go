package wire

import (
	"encoding/base64"
	"encoding/json"
	"strings"

	"github.com/deskrun/deskrun"
)

// Token string formats. Both carry the token's id, so the server finds the
// stored hash with one lookup and compares in constant time.
const (
	apiTokenPrefix        = "drt_"
	enrollmentTokenPrefix = "dre1_"
)

// FormatAPIToken renders an API token: drt_<id>.<secret>.
func FormatAPIToken(id, secret string) string { return apiTokenPrefix + id + "." + secret }

// ParseAPIToken splits an API token into id and secret.
func ParseAPIToken(s string) (id, secret string, ok bool) {
	rest, found := strings.CutPrefix(s, apiTokenPrefix)
	if !found {
		return "", "", false
	}
	id, secret, ok = strings.Cut(rest, ".")
	return id, secret, ok && id != "" && secret != ""
}

// EnrollmentToken is everything an agent needs to join a server it has
// never seen: where the server is, which CA to trust (SHA-256 of its DER,
// hex), and a secret that proves the right to enroll.
type EnrollmentToken struct {
	URL           string `json:"u"`
	CAFingerprint string `json:"f"`
	ID            string `json:"i"`
	Secret        string `json:"s"`
}

// Encode renders the token as dre1_<base64url(JSON)>.
func (t EnrollmentToken) Encode() string {
	b, _ := json.Marshal(t)
	return enrollmentTokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// ParseEnrollmentToken decodes a token made by Encode. A malformed token is
// an EnrollmentTokenInvalid error that says what is wrong, never echoing
// the secret.
func ParseEnrollmentToken(s string) (EnrollmentToken, error) {
	var t EnrollmentToken
	bad := func(why string) (EnrollmentToken, error) {
		return EnrollmentToken{}, &deskrun.Error{Code: deskrun.CodeEnrollmentTokenInvalid,
			Message:    "the enrollment token is malformed: " + why,
			Resolution: "Copy the whole token printed by `deskrun token create --enrollment` (it starts with dre1_), or create a new one."}
	}
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), enrollmentTokenPrefix)
	if !ok {
		return bad("it does not start with " + enrollmentTokenPrefix)
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return bad("it is not base64url")
	}
	if err := json.Unmarshal(b, &t); err != nil {
		return bad("its content is not a token")
	}
	if t.URL == "" || len(t.CAFingerprint) != 64 || t.ID == "" || t.Secret == "" {
		return bad("a field is missing")
	}
	return t, nil
}
