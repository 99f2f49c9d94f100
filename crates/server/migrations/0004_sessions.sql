-- fastpatch-server schema, version 4: dashboard sessions. The browser's cookie holds a random
-- session id; the server keeps only its SHA-256 (a copy of this table opens no session), the
-- SHA-256 of the API token the user logged in with (removing that token from the server ends
-- its sessions) and when the session expires. Logout deletes the row, on every server process
-- that shares the database.

CREATE TABLE dashboard_sessions (
    id_sha256 TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);
