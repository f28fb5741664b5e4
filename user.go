package deskrun

import "time"

// User is a person who signs in to the web console. Only an argon2id hash
// of the password is kept (PHC string form, "$argon2id$v=19$m=…").
type User struct {
	Name         string
	PasswordHash string
	Role         Role
	CreatedAt    time.Time
}

// Session is a signed-in console session. The cookie holds a random
// secret; the store keeps only its SHA-256 (IDHash), so a copy of the
// database opens no session. Actor is "user:NAME" or "token:ID" (a session
// opened with an API token), CSRF the token every form must echo.
type Session struct {
	IDHash    []byte
	Actor     string
	Role      Role
	CSRF      string
	CreatedAt time.Time
	ExpiresAt time.Time
}

// Audit actions of the console.
const (
	AuditUserCreate = "user.create"
	AuditSignIn     = "console.sign-in" // Result "ok" or "failed"
	AuditSignOut    = "console.sign-out"
)
