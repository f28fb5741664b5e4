package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/deskrun/deskrun"
)

const connectionColumns = `id, name, target, username, run_mode, logon_type, owner, state, reason, last_error,
	state_changed_at, last_tested_at, expires_in_days, expiry_checked_at, created_at, updated_at`

// connectionSelect reads connections with their credentials in one
// statement (so one snapshot, and no query per connection): a connection
// comes back as one row per credential, or one row of NULL credential
// columns when it has none. Rows of a connection are adjacent and its
// credentials ordered by machine id.
var connectionSelect = `SELECT c.` + strings.Join(strings.Split(connectionColumns, ", "), ", c.") + `,
	cc.machine_id, cc.key_id, cc.ciphertext
	FROM connections c LEFT JOIN connection_credentials cc ON cc.connection_id = c.id`

const connectionOrder = ` ORDER BY c.name, c.id, cc.machine_id`

// queryConnections runs connectionSelect with where (may be empty) and
// groups its rows into connections.
func (q *queries) queryConnections(ctx context.Context, where string, args ...any) ([]*deskrun.Connection, error) {
	rows, err := q.r.QueryContext(ctx, connectionSelect+where+connectionOrder, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var cs []*deskrun.Connection
	for rows.Next() {
		var (
			c                                                     deskrun.Connection
			runMode, state                                        string
			lastError                                             sql.NullString
			stateChanged, lastTested, expiryChecked, created, upd int64
			machineID, keyID                                      sql.NullString
			ciphertext                                            []byte
		)
		err := rows.Scan(&c.ID, &c.Name, &c.Target, &c.Username, &runMode, &c.LogonType, &c.Owner, &state,
			&c.Reason, &lastError, &stateChanged, &lastTested, &c.ExpiresInDays, &expiryChecked, &created, &upd,
			&machineID, &keyID, &ciphertext)
		if err != nil {
			return nil, err
		}
		if n := len(cs); n == 0 || cs[n-1].ID != c.ID {
			c.RunMode = deskrun.RunMode(runMode)
			c.State = deskrun.ConnectionState(state)
			if c.LastError, err = decodeError(lastError); err != nil {
				return nil, fmt.Errorf("decode last error of connection %s: %w", c.ID, err)
			}
			c.StateChangedAt = fromNanos(stateChanged)
			c.LastTestedAt = fromNanos(lastTested)
			c.ExpiryCheckedAt = fromNanos(expiryChecked)
			c.CreatedAt = fromNanos(created)
			c.UpdatedAt = fromNanos(upd)
			cs = append(cs, &c)
		}
		if machineID.Valid {
			last := cs[len(cs)-1]
			last.Credentials = append(last.Credentials, deskrun.SealedCredential{
				MachineID:  machineID.String,
				KeyID:      keyID.String,
				Ciphertext: nonEmpty(ciphertext),
			})
		}
	}
	return cs, rows.Err()
}

// checkCredentials refuses what the table would refuse less clearly: two
// credentials for one machine, and a credential without ciphertext.
func checkCredentials(c *deskrun.Connection) error {
	seen := make(map[string]bool, len(c.Credentials))
	for _, sc := range c.Credentials {
		if sc.MachineID == "" {
			return deskrun.Errorf(deskrun.CodeInvalid, "connection %q: a sealed credential has no machine id", c.Name)
		}
		if seen[sc.MachineID] {
			return deskrun.Errorf(deskrun.CodeInvalid, "connection %q has two credentials for machine %q", c.Name, sc.MachineID)
		}
		seen[sc.MachineID] = true
		if len(sc.Ciphertext) == 0 {
			return deskrun.Errorf(deskrun.CodeInvalid, "connection %q: the credential for machine %q has no ciphertext", c.Name, sc.MachineID)
		}
	}
	return nil
}

// insertCredentials writes c's credentials; the caller holds a transaction.
func (q *queries) insertCredentials(ctx context.Context, c *deskrun.Connection) error {
	for _, sc := range c.Credentials {
		if _, err := q.w.ExecContext(ctx, `INSERT INTO connection_credentials (connection_id, machine_id, key_id, ciphertext)
			VALUES (?, ?, ?, ?)`, c.ID, sc.MachineID, sc.KeyID, sc.Ciphertext); err != nil {
			return err
		}
	}
	return nil
}

// CreateConnection writes the connection and its credentials in one
// transaction (a savepoint inside the caller's).
func (q *queries) CreateConnection(ctx context.Context, c *deskrun.Connection) error {
	s := subject{op: "create connection", kind: "connection", id: c.ID, name: c.Name}
	if err := checkCredentials(c); err != nil {
		return err
	}
	lastError, err := errorJSON(c.LastError)
	if err != nil {
		return fmt.Errorf("%s: %w", s.op, err)
	}
	err = q.atomic(ctx, func(q *queries) error {
		if _, err := q.w.ExecContext(ctx, `INSERT INTO connections (`+connectionColumns+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			c.ID, c.Name, c.Target, c.Username, string(c.RunMode), c.LogonType, c.Owner, string(c.State),
			c.Reason, lastError, nanos(c.StateChangedAt), nanos(c.LastTestedAt), c.ExpiresInDays,
			nanos(c.ExpiryCheckedAt), nanos(c.CreatedAt), nanos(c.UpdatedAt)); err != nil {
			return err
		}
		return q.insertCredentials(ctx, c)
	})
	return interpretError(err, s)
}

func (q *queries) GetConnection(ctx context.Context, id string) (*deskrun.Connection, error) {
	return q.getConnection(ctx, ` WHERE c.id = ?`, id, subject{op: "get connection", kind: "connection", id: id})
}

func (q *queries) GetConnectionByName(ctx context.Context, name string) (*deskrun.Connection, error) {
	return q.getConnection(ctx, ` WHERE c.name = ?`, name, subject{op: "get connection", kind: "connection", name: name})
}

func (q *queries) getConnection(ctx context.Context, where string, arg any, s subject) (*deskrun.Connection, error) {
	cs, err := q.queryConnections(ctx, where, arg)
	if err == nil && len(cs) == 0 {
		err = sql.ErrNoRows
	}
	if err != nil {
		return nil, interpretError(err, s)
	}
	return cs[0], nil
}

// GetConnections returns the connections among ids that exist, with
// their credentials, ordered by name: one statement for many ids.
func (q *queries) GetConnections(ctx context.Context, ids []string) ([]*deskrun.Connection, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	cs, err := q.queryConnections(ctx, ` WHERE c.id IN (?`+strings.Repeat(", ?", len(ids)-1)+`)`, args...)
	if err != nil {
		return nil, interpretError(err, subject{op: "get connections"})
	}
	return cs, nil
}

// ListConnections returns every connection with its credentials, ordered
// by name.
func (q *queries) ListConnections(ctx context.Context) ([]*deskrun.Connection, error) {
	cs, err := q.queryConnections(ctx, "")
	if err != nil {
		return nil, interpretError(err, subject{op: "list connections"})
	}
	return cs, nil
}

// UpdateConnection writes everything of c but its id, owner and creation
// time, and replaces its credentials when c.Credentials is not nil (an
// empty, non-nil slice removes them all).
func (q *queries) UpdateConnection(ctx context.Context, c *deskrun.Connection) error {
	s := subject{op: "update connection", kind: "connection", id: c.ID, name: c.Name}
	if err := checkCredentials(c); err != nil {
		return err
	}
	lastError, err := errorJSON(c.LastError)
	if err != nil {
		return fmt.Errorf("%s: %w", s.op, err)
	}
	err = q.atomic(ctx, func(q *queries) error {
		res, err := q.w.ExecContext(ctx, `UPDATE connections SET name = ?, target = ?, username = ?, run_mode = ?,
			logon_type = ?, state = ?, reason = ?, last_error = ?, state_changed_at = ?, last_tested_at = ?,
			expires_in_days = ?, expiry_checked_at = ?, updated_at = ? WHERE id = ?`,
			c.Name, c.Target, c.Username, string(c.RunMode), c.LogonType, string(c.State), c.Reason, lastError,
			nanos(c.StateChangedAt), nanos(c.LastTestedAt), c.ExpiresInDays, nanos(c.ExpiryCheckedAt),
			nanos(c.UpdatedAt), c.ID)
		if err := mustAffect(res, err, s); err != nil {
			return err // a missing row names the id, a taken name the name
		}
		if c.Credentials == nil {
			return nil
		}
		if _, err := q.w.ExecContext(ctx, `DELETE FROM connection_credentials WHERE connection_id = ?`, c.ID); err != nil {
			return err
		}
		return q.insertCredentials(ctx, c)
	})
	return interpretError(err, s)
}

// SetConnectionHealth writes the health fields of c and nothing else:
// not the username, the credentials nor UpdatedAt, which record what an
// admin changed.
func (q *queries) SetConnectionHealth(ctx context.Context, c *deskrun.Connection) error {
	s := subject{op: "set connection health", kind: "connection", id: c.ID}
	lastError, err := errorJSON(c.LastError)
	if err != nil {
		return fmt.Errorf("%s: %w", s.op, err)
	}
	res, err := q.w.ExecContext(ctx, `UPDATE connections SET state = ?, reason = ?, last_error = ?,
		state_changed_at = ?, last_tested_at = ?, expires_in_days = ?, expiry_checked_at = ? WHERE id = ?`,
		string(c.State), c.Reason, lastError, nanos(c.StateChangedAt), nanos(c.LastTestedAt),
		c.ExpiresInDays, nanos(c.ExpiryCheckedAt), c.ID)
	return mustAffect(res, err, s)
}

// DeleteConnection deletes a connection; its credentials go with it (ON
// DELETE CASCADE). Its audit events stay.
func (q *queries) DeleteConnection(ctx context.Context, id string) error {
	res, err := q.w.ExecContext(ctx, `DELETE FROM connections WHERE id = ?`, id)
	return mustAffect(res, err, subject{op: "delete connection", kind: "connection", id: id})
}
