package wire

import "time"

// UserCreate is the body of POST /api/v1/users: a console user.
type UserCreate struct {
	Name     string `json:"name"`
	Role     string `json:"role"` // admin, maker, viewer
	Password Secret `json:"password"`
}

// User is a console user as the API shows it (never the hash).
type User struct {
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}
