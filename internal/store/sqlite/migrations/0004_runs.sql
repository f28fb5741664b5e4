-- 0004: runs of desktop flows, their output and their screenshots, and
-- the machines' unattended-session policy.
--
-- Same conventions as 0001: BIGINT unix nanoseconds (0 = unset), TEXT for
-- JSON (JSONB on PostgreSQL), BLOB for bytes (BYTEA).

-- Existing machines keep the policy they had before it could be chosen.
ALTER TABLE machines ADD COLUMN sessions TEXT NOT NULL DEFAULT 'shared';

-- Run ids come from deskrun.NewID and sort by creation time, so the
-- primary key is also the age order of the queue. No foreign keys: a run
-- outlives its connection and its machine (machine_id is '' while the run
-- is queued), and its job is only a pointer for GetRunByJob.
CREATE TABLE runs (
    id                   TEXT PRIMARY KEY,
    flow                 TEXT NOT NULL,
    version              INTEGER NOT NULL DEFAULT 0,
    digest               TEXT NOT NULL DEFAULT '',
    connection_id        TEXT NOT NULL DEFAULT '',
    machine_id           TEXT NOT NULL DEFAULT '',
    job_id               TEXT NOT NULL DEFAULT '',
    priority             TEXT NOT NULL DEFAULT 'normal',
    inputs               TEXT,
    state                TEXT NOT NULL,
    placement_reason     TEXT NOT NULL DEFAULT '',
    screenshot_requested INTEGER NOT NULL DEFAULT 0,
    outputs              TEXT,
    exit_code            INTEGER,
    error                TEXT,
    timings              TEXT,
    created_at           BIGINT NOT NULL DEFAULT 0,
    assigned_at          BIGINT NOT NULL DEFAULT 0,
    logon_at             BIGINT NOT NULL DEFAULT 0,
    started_at           BIGINT NOT NULL DEFAULT 0,
    finished_at          BIGINT NOT NULL DEFAULT 0,
    updated_at           BIGINT NOT NULL DEFAULT 0,
    queue_deadline       BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX runs_state_priority_id ON runs (state, priority, id);
CREATE INDEX runs_job_id ON runs (job_id);
CREATE INDEX runs_flow_id ON runs (flow, id);
CREATE INDEX runs_machine_id ON runs (machine_id, id);
CREATE INDEX runs_connection_id ON runs (connection_id, id);

-- A run's output in chunks; seq orders them and makes a resent chunk a
-- no-op (INSERT … ON CONFLICT DO NOTHING).
CREATE TABLE run_logs (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq    BIGINT NOT NULL,
    stream TEXT NOT NULL DEFAULT '',
    data   BLOB,
    at     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE run_screenshots (
    run_id TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    png    BLOB NOT NULL,
    at     BIGINT NOT NULL DEFAULT 0
);
