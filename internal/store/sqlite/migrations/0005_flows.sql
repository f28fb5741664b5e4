-- 0005: cloud flows, their runs and steps, schedule ticks, webhook
-- deliveries and the secret store. Same conventions as 0001.

CREATE TABLE flows (
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    definition TEXT NOT NULL,
    digest     TEXT NOT NULL,
    hook_id    TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (name, version)
);

CREATE INDEX flows_hook_id ON flows (hook_id);

-- No foreign key to flows: a run outlives its flow, as history.
CREATE TABLE flow_runs (
    id          TEXT PRIMARY KEY,
    flow        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    trigger     TEXT,
    inputs      TEXT,
    state       TEXT NOT NULL,
    outputs     TEXT,
    error       TEXT,
    created_at  BIGINT NOT NULL DEFAULT 0,
    started_at  BIGINT NOT NULL DEFAULT 0,
    finished_at BIGINT NOT NULL DEFAULT 0,
    updated_at  BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX flow_runs_flow_id ON flow_runs (flow, id);
CREATE INDEX flow_runs_state_id ON flow_runs (state, id);

-- One row per attempt of a step; its start is committed before the step
-- acts, its result once it has.
CREATE TABLE flow_steps (
    run_id         TEXT NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
    step_id        TEXT NOT NULL,
    attempt        INTEGER NOT NULL,
    kind           TEXT NOT NULL,
    state          TEXT NOT NULL,
    outputs        TEXT,
    error          TEXT,
    desktop_run_id TEXT NOT NULL DEFAULT '',
    started_at     BIGINT NOT NULL DEFAULT 0,
    finished_at    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, step_id, attempt)
);

-- The primary key is how a tick fires exactly once with several servers
-- on one store: the second INSERT of a tick fails.
CREATE TABLE schedule_ticks (
    flow      TEXT NOT NULL,
    tick_time BIGINT NOT NULL,
    run_id    TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (flow, tick_time)
);

CREATE TABLE webhook_deliveries (
    hook_id         TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    at              BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (hook_id, idempotency_key)
);

-- Values are sealed by the server (AES-256-GCM under DATA/secrets.key,
-- the name as associated data) before they reach the store.
CREATE TABLE secrets (
    name       TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    updated_at BIGINT NOT NULL DEFAULT 0
);
