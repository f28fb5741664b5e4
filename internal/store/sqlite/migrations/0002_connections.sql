-- 0002: connections, their sealed credentials, and the audit log.
--
-- Same conventions as 0001: BIGINT unix nanoseconds (0 = unset), TEXT for
-- JSON (JSONB on PostgreSQL), BLOB for bytes (BYTEA). A connection's
-- password is never stored in the clear: each row of connection_credentials
-- is the password sealed to one machine's HPKE key.

CREATE TABLE connections (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    target            TEXT NOT NULL,
    username          TEXT NOT NULL,
    run_mode          TEXT NOT NULL DEFAULT '',
    logon_type        TEXT NOT NULL DEFAULT '',
    owner             TEXT NOT NULL DEFAULT '',
    state             TEXT NOT NULL DEFAULT '',
    reason            TEXT NOT NULL DEFAULT '',
    last_error        TEXT,
    state_changed_at  BIGINT NOT NULL DEFAULT 0,
    last_tested_at    BIGINT NOT NULL DEFAULT 0,
    expires_in_days   INTEGER NOT NULL DEFAULT 0,
    expiry_checked_at BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL DEFAULT 0,
    updated_at        BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT connections_name_key UNIQUE (name)
);

-- Machines are not referenced: a credential sealed to a machine that was
-- deleted opens nowhere and goes when the connection is updated.
CREATE TABLE connection_credentials (
    connection_id TEXT NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    machine_id    TEXT NOT NULL,
    key_id        TEXT NOT NULL DEFAULT '',
    ciphertext    BLOB NOT NULL,
    PRIMARY KEY (connection_id, machine_id)
);

-- Audit ids come from deskrun.NewID and sort by time, so the primary key
-- is also the order of the log. No foreign keys: the log outlives what it
-- names.
CREATE TABLE audit (
    id              TEXT PRIMARY KEY,
    at              BIGINT NOT NULL DEFAULT 0,
    actor           TEXT NOT NULL DEFAULT '',
    action          TEXT NOT NULL,
    connection_id   TEXT NOT NULL DEFAULT '',
    connection_name TEXT NOT NULL DEFAULT '',
    machine_id      TEXT NOT NULL DEFAULT '',
    result          TEXT NOT NULL DEFAULT '',
    reason          TEXT NOT NULL DEFAULT '',
    detail          TEXT NOT NULL DEFAULT ''
);

CREATE INDEX audit_connection_id ON audit (connection_id, id);
CREATE INDEX audit_action_id ON audit (action, id);
