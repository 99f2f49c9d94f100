-- fastpatch-server schema, version 2: a package's extra files (Nebraska's
-- model). They sit next to the payload (same codebase) and are listed after it
-- in the Omaha manifest, not required.

CREATE TABLE package_files (
    package_id TEXT NOT NULL REFERENCES packages(id),
    position BIGINT NOT NULL,
    name TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha1_b64 TEXT NOT NULL,
    sha256_b64 TEXT NOT NULL,
    PRIMARY KEY (package_id, name)
);
