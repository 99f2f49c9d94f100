//! Durable install progress, so an interrupted install resumes at the last checkpoint.
//!
//! Files in the state directory, each replaced atomically (write tmp, fsync, rename, fsync
//! the directory):
//! - `manifest.bin`: the raw manifest (the resumed stream starts past it);
//! - `head.bin`: the held-back first MiB of the slot as far as written;
//! - `state.json`: payload id, target identity, manifest hash and the resume point.
//!   Written last: a checkpoint exists only once all three agree.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{IoContext, PayloadError, Result};
use crate::failpoint::fail_here;
use crate::stream::ResumePoint;

const STATE: &str = "state.json";
const MANIFEST: &str = "manifest.bin";
const HEAD: &str = "head.bin";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    payload_id: Option<String>,
    target: String,
    manifest_sha256: String,
    point: ResumePoint,
}

/// A checkpoint read back from disk.
#[derive(Debug)]
pub struct Saved {
    pub manifest: Vec<u8>,
    pub head: Vec<u8>,
    pub point: ResumePoint,
}

#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    payload_id: Option<String>,
    target: String,
    manifest_sha256: String,
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    fastpatch_durable::replace_with(&dir.join(name), bytes, |step| {
        if step == fastpatch_durable::Step::Synced {
            fail_here!("payload::state::before_rename");
        }
        Ok::<(), PayloadError>(())
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    Ok(fastpatch_durable::sync_dir(dir)?)
}

impl StateStore {
    pub fn new(dir: &Path, payload_id: Option<String>, target: String) -> Result<StateStore> {
        fs::create_dir_all(dir).ctx(|| format!("creating state directory {}", dir.display()))?;
        Ok(StateStore {
            dir: dir.to_path_buf(),
            payload_id,
            target,
            manifest_sha256: String::new(),
        })
    }

    /// The saved checkpoint, if there is one for this payload and target. A checkpoint of
    /// another payload or target, or one that does not read back, is ignored (and later
    /// overwritten): starting over is always safe.
    pub fn load(&self) -> Option<Saved> {
        let text = fs::read_to_string(self.dir.join(STATE)).ok()?;
        let state: StateFile = match serde_json::from_str(&text) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("ignoring unreadable install state: {e}");
                return None;
            }
        };
        if state.format != FORMAT
            || state.payload_id != self.payload_id
            || state.target != self.target
        {
            tracing::info!("install state belongs to another payload or target; starting over");
            return None;
        }
        let manifest = fs::read(self.dir.join(MANIFEST)).ok()?;
        if hex::encode(Sha256::digest(&manifest)) != state.manifest_sha256 {
            tracing::warn!("saved manifest does not match the install state; starting over");
            return None;
        }
        let head = fs::read(self.dir.join(HEAD)).unwrap_or_default();
        Some(Saved {
            manifest,
            head,
            point: state.point,
        })
    }

    /// Starts a fresh install: drops any old checkpoint, saves the manifest.
    pub fn begin(&mut self, manifest: &[u8]) -> Result<()> {
        self.clear()?;
        self.manifest_sha256 = hex::encode(Sha256::digest(manifest));
        write_atomic(&self.dir, MANIFEST, manifest)
    }

    /// Adopts the manifest of a loaded checkpoint.
    pub fn adopt(&mut self, manifest: &[u8]) {
        self.manifest_sha256 = hex::encode(Sha256::digest(manifest));
    }

    /// Records a checkpoint. The caller has already synced the target up to `point`.
    pub fn checkpoint(&self, point: &ResumePoint, head: Option<&[u8]>) -> Result<()> {
        if let Some(head) = head {
            write_atomic(&self.dir, HEAD, head)?;
        }
        let state = StateFile {
            format: FORMAT,
            payload_id: self.payload_id.clone(),
            target: self.target.clone(),
            manifest_sha256: self.manifest_sha256.clone(),
            point: point.clone(),
        };
        let json =
            serde_json::to_vec_pretty(&state).map_err(|e| PayloadError::State(e.to_string()))?;
        write_atomic(&self.dir, STATE, &json)
    }

    /// Removes the checkpoint (state first, so a crash in between leaves no stale state).
    pub fn clear(&self) -> Result<()> {
        for name in [STATE, HEAD, MANIFEST] {
            match fs::remove_file(self.dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(PayloadError::Io {
                        context: format!("removing {name}"),
                        error: e,
                    })
                }
            }
        }
        sync_dir(&self.dir)
    }
}
