package sqlite

import (
	"context"
	"time"

	"github.com/deskrun/deskrun"
)

const userColumns = `name, password_hash, role, created_at`

func scanUser(s scanner) (*deskrun.User, error) {
	var (
		u         deskrun.User
		role      string
		createdAt int64
	)
	if err := s.Scan(&u.Name, &u.PasswordHash, &role, &createdAt); err != nil {
		return nil, err
	}
	u.Role, u.CreatedAt = deskrun.Role(role), fromNanos(createdAt)
	return &u, nil
}

func (q *queries) CreateUser(ctx context.Context, u *deskrun.User) error {
	_, err := q.w.ExecContext(ctx, `INSERT INTO users (`+userColumns+`) VALUES (?, ?, ?, ?)`,
		u.Name, u.PasswordHash, string(u.Role), nanos(u.CreatedAt))
	return interpretError(err, subject{op: "create user", kind: "user", name: u.Name})
}

func (q *queries) GetUser(ctx context.Context, name string) (*deskrun.User, error) {
	u, err := scanUser(q.r.QueryRowContext(ctx, `SELECT `+userColumns+` FROM users WHERE name = ?`, name))
	if err != nil {
		return nil, interpretError(err, subject{op: "get user", kind: "user", name: name})
	}
	return u, nil
}

func (q *queries) ListUsers(ctx context.Context) ([]*deskrun.User, error) {
	us, err := queryAll(ctx, q.r, scanUser, `SELECT `+userColumns+` FROM users ORDER BY name`)
	return us, interpretError(err, subject{op: "list users"})
}

func (q *queries) UpdateUser(ctx context.Context, u *deskrun.User) error {
	res, err := q.w.ExecContext(ctx, `UPDATE users SET password_hash = ?, role = ? WHERE name = ?`, u.PasswordHash, string(u.Role), u.Name)
	return mustAffect(res, err, subject{op: "update user", kind: "user", name: u.Name})
}

const sessionColumns = `id_hash, actor, role, csrf, created_at, expires_at`

func (q *queries) CreateSession(ctx context.Context, se *deskrun.Session) error {
	_, err := q.w.ExecContext(ctx, `INSERT INTO sessions (`+sessionColumns+`) VALUES (?, ?, ?, ?, ?, ?)`,
		se.IDHash, se.Actor, string(se.Role), se.CSRF, nanos(se.CreatedAt), nanos(se.ExpiresAt))
	return interpretError(err, subject{op: "create session", kind: "session"})
}

func (q *queries) GetSession(ctx context.Context, idHash []byte) (*deskrun.Session, error) {
	var (
		se                   deskrun.Session
		role                 string
		createdAt, expiresAt int64
	)
	err := q.r.QueryRowContext(ctx, `SELECT `+sessionColumns+` FROM sessions WHERE id_hash = ?`, idHash).
		Scan(&se.IDHash, &se.Actor, &role, &se.CSRF, &createdAt, &expiresAt)
	if err != nil {
		return nil, interpretError(err, subject{op: "get session", kind: "session", id: "(hidden)"})
	}
	se.Role, se.CreatedAt, se.ExpiresAt = deskrun.Role(role), fromNanos(createdAt), fromNanos(expiresAt)
	return &se, nil
}

func (q *queries) DeleteSession(ctx context.Context, idHash []byte) error {
	_, err := q.w.ExecContext(ctx, `DELETE FROM sessions WHERE id_hash = ?`, idHash)
	return interpretError(err, subject{op: "delete session"})
}

func (q *queries) DeleteExpiredSessions(ctx context.Context, now time.Time) (int, error) {
	res, err := q.w.ExecContext(ctx, `DELETE FROM sessions WHERE expires_at <= ?`, nanos(now))
	if err != nil {
		return 0, interpretError(err, subject{op: "delete expired sessions"})
	}
	n, err := res.RowsAffected()
	return int(n), interpretError(err, subject{op: "delete expired sessions"})
}
