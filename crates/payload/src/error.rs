//! The one error type of the payload crate. Every variant says what is wrong with the input
//! or the environment in words an operator can act on.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
    #[error("not a CrAU payload (magic bytes are {0:02x?}, expected \"CrAU\")")]
    BadMagic([u8; 4]),
    #[error("unsupported payload format version {0} (only version 1 is supported)")]
    UnsupportedVersion(u64),
    #[error("manifest of {0} bytes exceeds the {max} byte limit", max = crate::format::MAX_MANIFEST_LEN)]
    ManifestTooLarge(u64),
    #[error("manifest is not a valid DeltaArchiveManifest: {0}")]
    ManifestDecode(#[from] prost::DecodeError),
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("operation {index}: {reason}")]
    InvalidOperation { index: usize, reason: String },
    #[error("operation {index} is {kind}, which this installer does not support")]
    UnsupportedOperation { index: usize, kind: String },
    #[error("operation {index} writes blocks up to byte {end}, beyond the end of the {slot_len} byte target")]
    ExtentOutOfRange {
        index: usize,
        end: u64,
        slot_len: u64,
    },
    #[error("payload image is {image} bytes but the target slot holds only {slot_len} bytes")]
    PayloadTooLarge { image: u64, slot_len: u64 },
    #[error("payload truncated: ended after {got} bytes, {expected} expected")]
    Truncated { got: u64, expected: u64 },
    /// More bytes than the manifest accounts for (`end`: where the payload ends).
    #[error("unexpected bytes after the end of the payload (byte {end})")]
    TrailingData { end: u64 },
    #[error("operation {index}: data SHA-256 mismatch (corrupt or tampered payload)")]
    OperationHashMismatch { index: usize },
    /// A delta payload given no source to read (`--source`, or the booted slot).
    #[error(
        "this is a delta payload (from {from}); it needs the source image it was made against"
    )]
    DeltaNeedsSource { from: String },
    /// The source is not the image the delta was made against: detected before the target
    /// is touched. The remedy is the full payload.
    #[error("the source is not the image this delta applies to: {reason}; use the full payload")]
    SourceMismatch { reason: String },
    /// The generator's delta would be no smaller than the full payload: nothing written.
    #[error("the delta would be {delta} bytes, not smaller than the {full} byte full payload; serve the full payload")]
    DeltaNotSmaller { delta: u64, full: u64 },
    /// A delta operation's source bytes changed since the source was checked.
    #[error("operation {index}: source data SHA-256 mismatch (the source changed during the install); use the full payload")]
    SourceHashMismatch { index: usize },
    #[error("operation {index}: {reason}")]
    Decompress { index: usize, reason: String },
    #[error(
        "payload is not signed (no signatures_offset/signatures_size in the manifest); refusing it"
    )]
    Unsigned,
    #[error("no signature in the payload verifies with any of the {keys} trusted key(s)")]
    BadSignature { keys: usize },
    #[error("signature block is malformed: {0}")]
    BadSignatureBlock(String),
    #[error("no trusted public key configured; refusing to install or verify without one")]
    NoTrustedKeys,
    #[error("no trusted public key found (looked at {0}): nothing to check a signature with")]
    NoKeysFound(String),
    #[error("cannot re-sign: {0}")]
    Resign(String),
    #[error("key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("signing failed: {0}")]
    Sign(String),
    /// A USR image's verity seal is missing or malformed (see `seal`).
    #[error("verity seal: {0}")]
    Seal(String),
    #[error("written slot does not match new_partition_info: {0}")]
    PartitionMismatch(String),
    #[error("read-back of the slot differs from what was written at byte {0}")]
    ReadbackMismatch(u64),
    #[error("target: {0}")]
    Target(String),
    #[error(transparent)]
    BootControl(#[from] fastpatch_boot_control::BootControlError),
    #[error(transparent)]
    Disk(#[from] fastpatch_disk::DiskError),
    #[error("resume state: {0}")]
    State(String),
    #[error("installer is unusable after an earlier error: {0}")]
    Poisoned(String),
    #[error("injected failure at {0}")]
    Injected(String),
}

pub type Result<T, E = PayloadError> = std::result::Result<T, E>;

/// Adds a context string to an io::Error.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl From<fastpatch_durable::DurableError> for PayloadError {
    fn from(e: fastpatch_durable::DurableError) -> Self {
        PayloadError::Io {
            context: format!("{} {}", e.op, e.path.display()),
            error: e.source,
        }
    }
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| PayloadError::Io {
            context: context(),
            error: source,
        })
    }
}
