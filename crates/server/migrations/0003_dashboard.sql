-- Dashboard chart history (version and status over time), written by the
-- dashboard's sampler (src/dashboard/rollup.rs) once a minute: the counts
-- of every group by status (dim 's') and by version (dim 'v'), stored at
-- four resolutions (res = 60, 900, 3600, 21600 s; bucket = start of the interval,
-- each bucket holds the last sample taken in it). A chart reads at most a
-- few thousand rows through the primary key, however many instances exist.
-- Applied with the other migrations; IF NOT EXISTS because earlier servers had the
-- dashboard create these itself, so a database may have them without version 3 recorded.

CREATE TABLE IF NOT EXISTS dashboard_samples (
    app_id TEXT NOT NULL,
    group_name TEXT NOT NULL,
    res BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    dim TEXT NOT NULL,
    key TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (app_id, group_name, res, bucket, dim, key)
);
-- Pruning and the per-bucket reset.
CREATE INDEX IF NOT EXISTS dashboard_samples_res_bucket ON dashboard_samples (res, bucket);

-- Instance list filters without a group: keyset pages ordered by machine_id
-- inside one status or one version (otherwise a rare status or an old version
-- means walking the primary key past every other machine: 150-280 ms at 1M).
CREATE INDEX IF NOT EXISTS instances_status_page ON instances (app_id, status, machine_id);
CREATE INDEX IF NOT EXISTS instances_version_page ON instances (app_id, version, machine_id);
