use std::io;
use std::path::PathBuf;

use crate::gpt::HeaderProblem;

/// Everything that can go wrong with a disk. Each message is one line that names the disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open {path}: {error}")]
    Open { path: PathBuf, error: io::Error },
    #[error("{path} is read-only (no write permission bits); refusing to modify it")]
    ReadOnly { path: PathBuf },
    #[error("{path}: {op} failed: {error}")]
    Io {
        path: PathBuf,
        op: &'static str,
        error: io::Error,
    },
    #[error("{path} is too small to hold a GPT ({len} bytes)")]
    TooSmall { path: PathBuf, len: u64 },
    #[error("{path} has no valid GPT (primary: {primary}; backup: {backup})")]
    NotGpt {
        path: PathBuf,
        primary: HeaderProblem,
        backup: HeaderProblem,
    },
    #[error("{path}: partition {index} does not exist (valid partition numbers: 1 to {count})")]
    NoSuchPartition {
        path: PathBuf,
        index: u32,
        count: u32,
    },
    #[error("{path}: partition {index} is unused")]
    EmptyPartition { path: PathBuf, index: u32 },
    #[error("{path}: partition {index} is not a USR partition (type {type_guid})")]
    NotUsr {
        path: PathBuf,
        index: u32,
        type_guid: uuid::Uuid,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: the write was cut at fail-point {point}")]
    InjectedCut { path: PathBuf, point: &'static str },
}

pub type Result<T, E = DiskError> = std::result::Result<T, E>;
