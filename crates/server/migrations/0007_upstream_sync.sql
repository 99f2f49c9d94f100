-- fastpatch-server schema, version 7: what the upstream syncer (`fastpatch-server sync`, or
-- `serve --sync-upstream`) is doing for each channel and architecture it mirrors, so the
-- dashboard and the API show progress. One row per (app, channel, arch), overwritten.

CREATE TABLE upstream_sync (
    app_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    arch TEXT NOT NULL,
    -- SyncState (checking, downloading, verifying, publishing, up_to_date, held, failed).
    state TEXT NOT NULL,
    -- The version being synced, or the last one synced.
    version TEXT,
    done_bytes BIGINT NOT NULL DEFAULT 0,
    total_bytes BIGINT NOT NULL DEFAULT 0,
    message TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, channel, arch)
);
