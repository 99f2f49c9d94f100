//! Signed CrAU update payloads, compatible with Flatcar's update_engine: generate, sign,
//! inspect and verify them, and stream-install them onto the passive slot.
//!
//! - [`generate::generate`] cuts a USR image into 1 MiB operations and signs the result.
//! - [`verify::verify`] / [`verify::inspect`] check a payload file offline.
//! - [`install::Installer`] is the streaming installer the engine drives: push the payload
//!   bytes in as they download, then `finish()`; it resumes after an interruption.
//!
//! ```no_run
//! use std::sync::Arc;
//! use fastpatch_payload::install::{FileRange, InstallOptions, Installer};
//! let keys = fastpatch_payload::keys::load_public_keys(&["/usr/share/update_engine/key.pem"])?;
//! let target = Arc::new(FileRange::partition("/dev/vda".as_ref(), 4)?);
//! let mut opts = InstallOptions::new(keys);
//! opts.state_dir = Some("/var/lib/fastpatch/install".into());
//! let mut installer = Installer::new(target, opts)?;
//! let _from = installer.resume_offset(); // HTTP Range start
//! # let chunk: &[u8] = &[];
//! installer.feed(chunk)?;                 // for every chunk received
//! let report = installer.finish()?;       // verified: slot holds the signed image
//! # Ok::<(), fastpatch_payload::PayloadError>(())
//! ```

mod assemble;
pub mod cli;
pub mod delta;
mod error;
mod failpoint;
pub mod format;
pub mod generate;
pub mod install;
pub mod keys;
pub mod proto;
pub mod ratelimit;
pub mod resign;
pub mod seal;
mod sha;
pub mod signing;
pub mod stream;
pub mod verify;

pub use error::{PayloadError, Result};
pub use failpoint::FAIL_POINTS;
pub use sha::ResumableSha256;
