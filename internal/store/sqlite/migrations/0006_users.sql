-- 0006: console users and their sessions.
--
-- Same conventions as 0001: BIGINT unix nanoseconds, BLOB for bytes.
-- password_hash is an argon2id PHC string; a session row holds the SHA-256
-- of the cookie's secret, never the secret.

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

-- actor is "user:NAME" or "token:ID"; the role is re-checked against the
-- user or token on every request, so a demotion or revocation takes effect
-- at once.
CREATE TABLE sessions (
    id_hash    BLOB PRIMARY KEY,
    actor      TEXT NOT NULL,
    role       TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_expires ON sessions (expires_at);
