-- fastpatch-server schema, version 1. Written once for both SQLite and
-- PostgreSQL: {ID} is replaced by the engine's auto-increment key type.
-- Times are unix seconds (BIGINT); booleans are BIGINT 0/1.

CREATE TABLE apps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE packages (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id),
    version TEXT NOT NULL,
    arch TEXT NOT NULL,
    file_name TEXT NOT NULL,
    -- NULL: hosted by this server under /v1/payloads/{id}/; else an external codebase (CDN).
    base_url TEXT,
    size BIGINT NOT NULL,
    sha1_b64 TEXT NOT NULL,
    sha256_b64 TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (app_id, version, arch)
);

CREATE TABLE channels (
    app_id TEXT NOT NULL REFERENCES apps(id),
    name TEXT NOT NULL,
    version TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, name)
);

CREATE TABLE channel_history (
    id {ID},
    app_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    version TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX channel_history_channel ON channel_history (app_id, channel, id);

CREATE TABLE update_groups (
    app_id TEXT NOT NULL REFERENCES apps(id),
    name TEXT NOT NULL,
    channel TEXT NOT NULL,
    updates_enabled BIGINT NOT NULL DEFAULT 1,
    max_updates_per_period BIGINT,
    period_secs BIGINT NOT NULL DEFAULT 3600,
    max_concurrent BIGINT,
    update_timeout_secs BIGINT NOT NULL DEFAULT 3600,
    office_hours BIGINT NOT NULL DEFAULT 0,
    office_tz TEXT NOT NULL DEFAULT 'UTC',
    office_days BIGINT NOT NULL DEFAULT 31,
    office_start_minute BIGINT NOT NULL DEFAULT 540,
    office_end_minute BIGINT NOT NULL DEFAULT 1020,
    safe_mode BIGINT NOT NULL DEFAULT 1,
    rollout_duration_secs BIGINT NOT NULL DEFAULT 0,
    rollout_started_at BIGINT NOT NULL DEFAULT 0,
    halted BIGINT NOT NULL DEFAULT 0,
    halted_reason TEXT,
    halted_at BIGINT,
    -- Bumped by every grant: the UPDATE takes the row lock that serialises grants.
    grant_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, name)
);

CREATE TABLE floors (
    app_id TEXT NOT NULL REFERENCES apps(id),
    version TEXT NOT NULL,
    PRIMARY KEY (app_id, version)
);

CREATE TABLE instances (
    app_id TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    alias TEXT,
    ip TEXT,
    version TEXT NOT NULL,
    arch TEXT NOT NULL,
    group_name TEXT NOT NULL,
    status TEXT NOT NULL,
    target_version TEXT,
    granted_at BIGINT,
    status_at BIGINT NOT NULL,
    last_check_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_error_code BIGINT,
    PRIMARY KEY (app_id, machine_id)
);
-- Group page: counts by status and by version; keyset pages inside a group.
CREATE INDEX instances_group_status ON instances (app_id, group_name, status, version);
CREATE INDEX instances_group_version ON instances (app_id, group_name, version);
CREATE INDEX instances_group_page ON instances (app_id, group_name, machine_id);
-- Silent machines, retention.
CREATE INDEX instances_last_check ON instances (last_check_at);
CREATE INDEX instances_alias ON instances (alias);
CREATE INDEX instances_ip ON instances (ip);

CREATE TABLE instance_history (
    id {ID},
    app_id TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    group_name TEXT NOT NULL,
    status TEXT NOT NULL,
    version TEXT NOT NULL,
    target_version TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX instance_history_machine ON instance_history (app_id, machine_id, id);
CREATE INDEX instance_history_group_at ON instance_history (app_id, group_name, at);
CREATE INDEX instance_history_at ON instance_history (at);

CREATE TABLE events (
    id {ID},
    app_id TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    group_name TEXT NOT NULL,
    event_type BIGINT NOT NULL,
    event_result BIGINT NOT NULL,
    error_code BIGINT,
    previous_version TEXT,
    version TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX events_machine ON events (app_id, machine_id, id);
CREATE INDEX events_at ON events (at);

CREATE TABLE grants (
    id {ID},
    app_id TEXT NOT NULL,
    group_name TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    version TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX grants_group_at ON grants (app_id, group_name, at);

CREATE TABLE activity (
    id {ID},
    app_id TEXT,
    group_name TEXT,
    kind TEXT NOT NULL,
    version TEXT,
    message TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX activity_at ON activity (at);
