//! Replacing a small file durably: the one helper for the engine's state, the installer's
//! resume state, the download's hash checkpoints and the boot counter.
//!
//! Durability points, in order: the new content is written to `NAME.tmp` beside the file and
//! fsynced ([`Step::Synced`]); it is renamed over the file ([`Step::Renamed`]; atomic, so a cut
//! before this leaves the old file whole); the directory is fsynced, after which the new content
//! survives a power cut. A caller that must test cuts between the steps passes a hook to
//! [`replace_with`] (fail-points return an error from it).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A file operation that failed, with the file it was on.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct DurableError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DurableError + 'a {
    move |source| DurableError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The points between the steps of a replacement, as [`replace_with`]'s hook sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The temp file holds the new content, not yet fsynced.
    Written,
    /// The temp file is fsynced; the file itself is still the old one.
    Synced,
    /// The file is the new one; the directory entry is not yet fsynced.
    Renamed,
}

/// The temp file [`replace`] writes beside `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` with `bytes` durably (its directory must exist).
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    replace_with(path, bytes, |_| Ok(()))
}

/// [`replace`], calling `at` between the steps; an error from `at` stops the replacement there
/// (what a power cut at that point would leave).
pub fn replace_with<E: From<DurableError>>(
    path: &Path,
    bytes: &[u8],
    mut at: impl FnMut(Step) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temp_path(path);
    {
        let mut f = File::create(&tmp).map_err(err("create", &tmp))?;
        f.write_all(bytes).map_err(err("write", &tmp))?;
        at(Step::Written)?;
        f.sync_all().map_err(err("fsync", &tmp))?;
    }
    at(Step::Synced)?;
    std::fs::rename(&tmp, path).map_err(err("rename", &tmp))?;
    at(Step::Renamed)?;
    sync_dir(parent(path))?;
    Ok(())
}

/// Creates `dir` (and its parents) if missing, fsyncing the parent of a directory it made, so
/// the directory itself survives a power cut.
pub fn create_dir(dir: &Path) -> Result<(), DurableError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(err("create", dir))?;
    sync_dir(parent(dir))
}

/// Fsyncs a directory: the renames and new entries in it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync", dir))
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "old").unwrap();
        replace(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!temp_path(&path).exists());
        assert_eq!(temp_path(&path), dir.path().join("state.json.tmp"));
    }

    #[test]
    fn a_cut_before_the_rename_keeps_the_old_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "old").unwrap();
        let mut seen = Vec::new();
        let cut = replace_with(&path, b"new", |step| {
            seen.push(step);
            if step == Step::Synced {
                Err(DurableError {
                    op: "cut",
                    path: path.clone(),
                    source: io::Error::other("power cut"),
                })
            } else {
                Ok(())
            }
        });
        assert!(cut.is_err());
        assert_eq!(seen, [Step::Written, Step::Synced]);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read(temp_path(&path)).unwrap(), b"new");
        // The next replacement overwrites the leftover temp file.
        replace(&path, b"newer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"newer");
    }

    #[test]
    fn errors_name_the_operation_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/state.json");
        let e = replace(&path, b"x").unwrap_err();
        assert_eq!(e.op, "create");
        assert!(e.to_string().contains("missing/state.json.tmp"), "{e}");
        create_dir(&dir.path().join("missing")).unwrap();
        replace(&path, b"x").unwrap();
    }
}
