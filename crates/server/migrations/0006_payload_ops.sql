-- fastpatch-server schema, version 6: which payload operations each payload uses,
-- so a client is only offered a payload it can apply (stock Flatcar clients apply
-- REPLACE and REPLACE_BZ only), and a second encoding of a version's image.

-- Comma-separated operation names (fastpatch_omaha::PayloadOps); NULL: not known
-- (published before version 6, registered at another URL, or not a CrAU payload).
ALTER TABLE packages ADD COLUMN payload_ops TEXT;
-- The SHA-256 (hex) of the image the payload writes (new_partition_info); NULL: not known.
ALTER TABLE packages ADD COLUMN image_sha256 TEXT;

-- Another payload of a package: the same image (same image_sha256), other operations
-- (e.g. the Flatcar-compatible bzip2 payload next to the zstd one). Hosted here,
-- under /v1/payloads/{id}/; the package's extra files are listed with it.
CREATE TABLE package_variants (
    id TEXT PRIMARY KEY,
    package_id TEXT NOT NULL REFERENCES packages(id),
    payload_ops TEXT NOT NULL,
    file_name TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha1_b64 TEXT NOT NULL,
    sha256_b64 TEXT NOT NULL,
    served_bytes BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    UNIQUE (package_id, payload_ops)
);
