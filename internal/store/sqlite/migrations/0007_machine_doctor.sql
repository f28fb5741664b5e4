-- 0007: the agent's latest doctor report (protocol 4), as JSON:
-- {"at": RFC 3339, "checks": [{"name", "status", "detail", "fix"}]}.
-- NULL until the agent sends one; agents before protocol 4 never do.
ALTER TABLE machines ADD COLUMN doctor TEXT;
