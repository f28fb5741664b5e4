package deskrun

import "time"

// TokenKind separates API bearer tokens from one-time enrollment tokens.
type TokenKind string

const (
	TokenAPI        TokenKind = "api"
	TokenEnrollment TokenKind = "enrollment"
)

// Role is what an API token (or console user) may do.
type Role string

const (
	RoleAdmin  Role = "admin"
	RoleMaker  Role = "maker"
	RoleViewer Role = "viewer"
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return r == RoleAdmin || r == RoleMaker || r == RoleViewer }

// Allows reports whether r includes the rights of want (admin ⊃ maker ⊃ viewer).
func (r Role) Allows(want Role) bool { return r.rank() >= want.rank() }

func (r Role) rank() int {
	switch r {
	case RoleAdmin:
		return 3
	case RoleMaker:
		return 2
	case RoleViewer:
		return 1
	}
	return 0
}

// Token is an API or enrollment token as the server stores it: only the
// SHA-256 of its secret is kept.
type Token struct {
	ID        string
	Kind      TokenKind
	Name      string
	Role      Role // API tokens only
	Hash      []byte
	CreatedAt time.Time
	ExpiresAt time.Time // zero: never
	// UsesLeft counts the enrollments an enrollment token still allows.
	UsesLeft  int
	RevokedAt time.Time // zero: not revoked
	LastUsed  time.Time
}

// Active reports whether the token can still be used at now.
func (t *Token) Active(now time.Time) bool {
	if !t.RevokedAt.IsZero() {
		return false
	}
	if !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt) {
		return false
	}
	return t.Kind != TokenEnrollment || t.UsesLeft > 0
}
