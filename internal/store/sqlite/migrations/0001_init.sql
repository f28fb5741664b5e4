-- 0001: machines, tokens and jobs.
--
-- Kept close to PostgreSQL: the same table and column names, BIGINT unix
-- nanoseconds for times (0 = unset), TEXT for JSON. Only the types of key
-- and JSON columns differ there (BYTEA, JSONB).

CREATE TABLE machines (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    os               TEXT NOT NULL DEFAULT '',
    arch             TEXT NOT NULL DEFAULT '',
    kernel           TEXT NOT NULL DEFAULT '',
    agent_version    TEXT NOT NULL DEFAULT '',
    protocol_version INTEGER NOT NULL DEFAULT 0,
    join_state       TEXT NOT NULL DEFAULT '',
    domain           TEXT NOT NULL DEFAULT '',
    slots            INTEGER NOT NULL DEFAULT 0,
    signing_key      BLOB,
    seal_key         BLOB,
    seal_key_id      TEXT NOT NULL DEFAULT '',
    state            TEXT NOT NULL DEFAULT 'offline',
    last_seen        BIGINT NOT NULL DEFAULT 0,
    offline_reason   TEXT NOT NULL DEFAULT '',
    created_at       BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT machines_name_key UNIQUE (name)
);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL DEFAULT '',
    role       TEXT NOT NULL DEFAULT '',
    hash       BLOB NOT NULL,
    created_at BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT NOT NULL DEFAULT 0,
    uses_left  INTEGER NOT NULL DEFAULT 0,
    revoked_at BIGINT NOT NULL DEFAULT 0,
    last_used  BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX tokens_kind_created ON tokens (kind, created_at);

-- Job ids come from deskrun.NewID and sort by creation time, so the
-- primary key is also the creation order.
CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    machine_id    TEXT NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    kind          TEXT NOT NULL,
    payload       TEXT,
    state         TEXT NOT NULL,
    result        TEXT,
    error         TEXT,
    progress      TEXT NOT NULL DEFAULT '',
    created_at    BIGINT NOT NULL DEFAULT 0,
    updated_at    BIGINT NOT NULL DEFAULT 0,
    lease_expires BIGINT NOT NULL DEFAULT 0,
    finished_at   BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX jobs_machine_state ON jobs (machine_id, state);
CREATE INDEX jobs_machine_id ON jobs (machine_id, id);
