//! The engine's durable state on disk: one JSON file replaced atomically.
//!
//! Durability points (`fastpatch-durable`): the temp file is fsynced before the rename, and the
//! directory after it, so after `save` returns the new state survives a power cut; a cut before
//! that leaves the old file whole (rename is atomic).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::machine::DurableState;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("cannot encode the engine state: {0}")]
    Encode(serde_json::Error),
    #[error("state write cut at fail-point {0}")]
    InjectedCut(&'static str),
}

impl From<fastpatch_durable::DurableError> for PersistError {
    fn from(e: fastpatch_durable::DurableError) -> Self {
        PersistError::Io {
            op: e.op,
            path: e.path,
            error: e.source,
        }
    }
}

/// The fail-points of [`save`], in the order a save passes them (the power-cut tests arm them).
pub const CUT_POINTS: &[&str] = &[
    "engine-state-tmp-written",
    "engine-state-tmp-synced",
    "engine-state-renamed",
];

macro_rules! cut_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| Err(PersistError::InjectedCut($name)));
    };
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PersistError + 'a {
    move |source| PersistError::Io {
        op,
        path: path.to_path_buf(),
        error: source,
    }
}

/// Loads the state; a missing file is a fresh machine. A file that does not parse (only
/// possible through outside damage) is moved aside as `<name>.corrupt` and a fresh state is
/// used, with a warning: refusing to start would leave the machine unable to update at all.
pub fn load(path: &Path) -> Result<DurableState, PersistError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(DurableState::default()),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    match serde_json::from_str(&text) {
        Ok(state) => Ok(state),
        Err(e) => {
            let aside = path.with_extension("corrupt");
            tracing::warn!(file = %path.display(), error = %e, moved_to = %aside.display(), "engine state unreadable; starting fresh");
            fs::rename(path, &aside).map_err(io_err("move aside", path))?;
            Ok(DurableState::default())
        }
    }
}

/// Replaces the state file atomically and durably.
pub fn save(path: &Path, state: &DurableState) -> Result<(), PersistError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fastpatch_durable::create_dir(dir)?;
    let bytes = serde_json::to_vec_pretty(state).map_err(PersistError::Encode)?;
    fastpatch_durable::replace_with(path, &bytes, |step| {
        use fastpatch_durable::Step;
        match step {
            Step::Written => {
                cut_point!("engine-state-tmp-written");
            }
            Step::Synced => {
                cut_point!("engine-state-tmp-synced");
            }
            Step::Renamed => {
                cut_point!("engine-state-renamed");
            }
        }
        Ok::<(), PersistError>(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::StagedUpdate;
    use crate::report::Event;

    fn sample() -> DurableState {
        DurableState {
            aleph_version: Some("3510.2.0".into()),
            staged: Some(StagedUpdate {
                version: "2".into(),
                from_version: "1".into(),
                boot_id: "b".into(),
                gpt_staged: true,
            }),
            pending_events: vec![Event::installed()],
        }
    }

    #[test]
    fn round_trip_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/engine.json");
        assert_eq!(load(&path).unwrap(), DurableState::default());
        save(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), sample());
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(load(&path).unwrap(), DurableState::default());
        assert!(
            path.with_extension("corrupt").exists(),
            "the damaged file is kept for a person to look at"
        );
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn a_cut_at_every_point_leaves_old_or_new() {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.json");
        let old = DurableState {
            aleph_version: Some("1".into()),
            ..DurableState::default()
        };
        for point in [
            "engine-state-tmp-written",
            "engine-state-tmp-synced",
            "engine-state-renamed",
        ] {
            save(&path, &old).unwrap();
            fail::cfg(point, "return").unwrap();
            assert!(save(&path, &sample()).is_err());
            fail::remove(point);
            let got = load(&path).unwrap();
            let want = if point == "engine-state-renamed" {
                sample()
            } else {
                old.clone()
            };
            assert_eq!(got, want, "{point}");
        }
        scenario.teardown();
    }
}
