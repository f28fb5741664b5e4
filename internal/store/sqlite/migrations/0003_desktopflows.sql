-- 0003: desktop flows, their versions, and the packages they run.
--
-- Same conventions as 0001: BIGINT unix nanoseconds (0 = unset), TEXT for
-- JSON (JSONB on PostgreSQL), BLOB for bytes (BYTEA). Packages are content
-- addressed: the same archive pushed twice, or used by two flows, is one
-- row of packages.

CREATE TABLE packages (
    digest     TEXT PRIMARY KEY,
    data       BLOB NOT NULL,
    size       BIGINT NOT NULL,
    created_at BIGINT NOT NULL DEFAULT 0
);

-- A package cannot go while a version uses it (no ON DELETE): deleting a
-- flow deletes its versions first, then the packages nothing uses.
CREATE TABLE desktop_flows (
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    digest     TEXT NOT NULL REFERENCES packages (digest),
    manifest   TEXT NOT NULL,
    size       BIGINT NOT NULL,
    created_at BIGINT NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (name, version)
);

CREATE INDEX desktop_flows_digest ON desktop_flows (digest);
