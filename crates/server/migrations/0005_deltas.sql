-- fastpatch-server schema, version 5: delta payloads, which the server makes
-- from two hosted full payloads (crate fastpatch-payload, module delta), and
-- the bytes served per payload, full or delta.

CREATE TABLE deltas (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id),
    -- The full package this delta builds (its version and arch).
    package_id TEXT NOT NULL REFERENCES packages(id),
    -- The version a machine must run for this delta to apply, and its package.
    source_version TEXT NOT NULL,
    source_package_id TEXT NOT NULL REFERENCES packages(id),
    -- ready: hosted under /v1/payloads/{id}/ and offered; not_smaller, failed:
    -- nothing to serve (why in `note`), the full payload is offered instead.
    state TEXT NOT NULL,
    file_name TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha1_b64 TEXT NOT NULL,
    sha256_b64 TEXT NOT NULL,
    note TEXT,
    served_bytes BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    UNIQUE (package_id, source_version)
);
CREATE INDEX deltas_app ON deltas (app_id);

ALTER TABLE packages ADD COLUMN served_bytes BIGINT NOT NULL DEFAULT 0;
