//! Facts about this machine that go into every Omaha request, read under a root directory.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SysInfoError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("{path} has no {key}= line")]
    Missing { path: PathBuf, key: &'static str },
    #[error("no os-release to read the OS version from: neither {} nor {} exists", .0[0].display(), .0[1].display())]
    NoOsRelease([PathBuf; 2]),
}

fn read(path: PathBuf) -> Result<String, SysInfoError> {
    std::fs::read_to_string(&path).map_err(|source| SysInfoError::Read {
        path,
        error: source,
    })
}

/// `KEY=value` from an os-release style file (quotes stripped).
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k == key).then(|| v.trim().trim_matches('"').trim_matches('\'').to_string())
    })
}

/// The running OS version: `VERSION` from `/usr/lib/os-release`, else `/etc/os-release` (only
/// when the first does not exist; any other read error is reported as it is).
pub fn os_version(root: &Path) -> Result<String, SysInfoError> {
    let paths = [root.join("usr/lib/os-release"), root.join("etc/os-release")];
    for path in &paths {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                return os_release_value(&text, "VERSION").ok_or(SysInfoError::Missing {
                    path: path.clone(),
                    key: "VERSION",
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(SysInfoError::Read {
                    path: path.clone(),
                    error: source,
                })
            }
        }
    }
    Err(SysInfoError::NoOsRelease(paths))
}

/// `/etc/machine-id` (32 hex characters).
pub fn machine_id(root: &Path) -> Result<String, SysInfoError> {
    Ok(read(root.join("etc/machine-id"))?.trim().to_string())
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`, or a file given in tests).
pub fn boot_id(path: &Path) -> Result<String, SysInfoError> {
    Ok(read(path.to_path_buf())?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_version_from_usr_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/lib")).unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("usr/lib/os-release"),
            "NAME=\"Flatcar\"\nVERSION=3510.2.1\nID=flatcar\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/os-release"), "VERSION=0\n").unwrap();
        std::fs::write(
            dir.path().join("etc/machine-id"),
            "abce671d61774703ac7be60715220bfe\n",
        )
        .unwrap();
        assert_eq!(os_version(dir.path()).unwrap(), "3510.2.1");
        assert_eq!(
            machine_id(dir.path()).unwrap(),
            "abce671d61774703ac7be60715220bfe"
        );
        std::fs::write(dir.path().join("usr/lib/os-release"), "NAME=x\n").unwrap();
        assert!(os_version(dir.path())
            .unwrap_err()
            .to_string()
            .contains("no VERSION= line"));
    }

    #[test]
    fn no_os_release_names_both_paths_and_etc_is_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let err = os_version(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("usr/lib/os-release") && err.contains("etc/os-release"),
            "{err}"
        );
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/os-release"), "VERSION=7.1.0\n").unwrap();
        assert_eq!(os_version(dir.path()).unwrap(), "7.1.0");
        // An os-release that exists but cannot be read is that error, not the fallback.
        std::fs::create_dir_all(dir.path().join("usr/lib/os-release")).unwrap();
        let err = os_version(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("cannot read") && err.contains("usr/lib/os-release"),
            "{err}"
        );
    }
}
