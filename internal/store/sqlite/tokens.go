package sqlite

import (
	"context"
	"time"

	"github.com/deskrun/deskrun"
)

const tokenColumns = `id, kind, name, role, hash, created_at, expires_at, uses_left, revoked_at, last_used`

func scanToken(s scanner) (*deskrun.Token, error) {
	var (
		t                                         deskrun.Token
		kind, role                                string
		createdAt, expiresAt, revokedAt, lastUsed int64
	)
	if err := s.Scan(&t.ID, &kind, &t.Name, &role, &t.Hash, &createdAt, &expiresAt, &t.UsesLeft, &revokedAt, &lastUsed); err != nil {
		return nil, err
	}
	t.Kind = deskrun.TokenKind(kind)
	t.Role = deskrun.Role(role)
	t.Hash = nonEmpty(t.Hash)
	t.CreatedAt = fromNanos(createdAt)
	t.ExpiresAt = fromNanos(expiresAt)
	t.RevokedAt = fromNanos(revokedAt)
	t.LastUsed = fromNanos(lastUsed)
	return &t, nil
}

func (q *queries) CreateToken(ctx context.Context, t *deskrun.Token) error {
	hash := t.Hash
	if hash == nil {
		hash = []byte{} // NOT NULL; a token without a hash matches nothing
	}
	_, err := q.w.ExecContext(ctx, `INSERT INTO tokens (`+tokenColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		t.ID, string(t.Kind), t.Name, string(t.Role), hash, nanos(t.CreatedAt), nanos(t.ExpiresAt),
		t.UsesLeft, nanos(t.RevokedAt), nanos(t.LastUsed))
	return interpretError(err, subject{op: "create token", kind: "token", id: t.ID})
}

func (q *queries) GetToken(ctx context.Context, id string) (*deskrun.Token, error) {
	t, err := scanToken(q.r.QueryRowContext(ctx, `SELECT `+tokenColumns+` FROM tokens WHERE id = ?`, id))
	if err != nil {
		return nil, interpretError(err, subject{op: "get token", kind: "token", id: id})
	}
	return t, nil
}

// ListTokens returns the tokens of a kind (every token when kind is
// empty), oldest first, revoked and expired ones included.
func (q *queries) ListTokens(ctx context.Context, kind deskrun.TokenKind) ([]*deskrun.Token, error) {
	ts, err := queryAll(ctx, q.r, scanToken, `SELECT `+tokenColumns+` FROM tokens
		WHERE ? = '' OR kind = ? ORDER BY created_at, id`, string(kind), string(kind))
	return ts, interpretError(err, subject{op: "list tokens"})
}

func (q *queries) RevokeToken(ctx context.Context, id string, at time.Time) error {
	s := subject{op: "revoke token", kind: "token", id: id}
	res, err := q.w.ExecContext(ctx, `UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at = 0`, nanos(at), id)
	if err != nil {
		return interpretError(err, s)
	}
	if n, err := res.RowsAffected(); err != nil || n > 0 {
		return interpretError(err, s)
	}
	// Nothing changed: already revoked (fine) or missing.
	_, err = q.GetToken(ctx, id)
	return err
}

// UseEnrollmentToken takes one use in a single conditional UPDATE, so that
// of two agents racing for the last use exactly one sees a row change.
// Only when nothing changed does it read the token, to say why.
func (q *queries) UseEnrollmentToken(ctx context.Context, id string, at time.Time) error {
	s := subject{op: "use enrollment token", kind: "token", id: id}
	res, err := q.w.ExecContext(ctx, `UPDATE tokens SET uses_left = uses_left - 1, last_used = ?
		WHERE id = ? AND kind = ? AND uses_left > 0 AND revoked_at = 0 AND (expires_at = 0 OR expires_at > ?)`,
		nanos(at), id, string(deskrun.TokenEnrollment), nanos(at))
	if err != nil {
		return interpretError(err, s)
	}
	if n, err := res.RowsAffected(); err != nil || n > 0 {
		return interpretError(err, s)
	}

	// Read on the writer: the reason must come from the state the UPDATE saw
	// or a later one, never an older snapshot.
	t, err := scanToken(q.w.QueryRowContext(ctx, `SELECT `+tokenColumns+` FROM tokens WHERE id = ?`, id))
	switch {
	case err != nil && deskrun.IsCode(interpretError(err, s), deskrun.CodeNotFound):
		return deskrun.Errorf(deskrun.CodeEnrollmentTokenInvalid, "enrollment token %q does not exist", id)
	case err != nil:
		return interpretError(err, s)
	case t.Kind != deskrun.TokenEnrollment:
		return deskrun.Errorf(deskrun.CodeEnrollmentTokenInvalid, "token %q is not an enrollment token", id)
	case !t.RevokedAt.IsZero():
		return deskrun.Errorf(deskrun.CodeEnrollmentTokenInvalid, "enrollment token %q was revoked", id)
	case !t.ExpiresAt.IsZero() && !at.Before(t.ExpiresAt):
		return deskrun.Errorf(deskrun.CodeEnrollmentTokenExpired, "enrollment token %q expired at %s", id, t.ExpiresAt.Format(time.RFC3339))
	default:
		return deskrun.Errorf(deskrun.CodeEnrollmentTokenUsedUp, "enrollment token %q has no uses left", id)
	}
}

func (q *queries) TouchToken(ctx context.Context, id string, at time.Time) error {
	res, err := q.w.ExecContext(ctx, `UPDATE tokens SET last_used = ? WHERE id = ?`, nanos(at), id)
	return mustAffect(res, err, subject{op: "touch token", kind: "token", id: id})
}
