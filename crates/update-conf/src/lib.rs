//! `update.conf`, read the way Flatcar's update_engine and locksmithd read it.
//!
//! Files, in order: `/etc/flatcar/update.conf`, `/etc/coreos/update.conf` (CoreOS-era),
//! `/usr/share/flatcar/update.conf`, `/usr/share/coreos/update.conf`, all under a root
//! directory (`/` in production, a temp dir in tests). For each key, the first file that sets
//! it wins. Lines are `KEY=VALUE`; `#` starts a comment; one pair of surrounding quotes is
//! stripped. Callers re-read it whenever they need a fresh value (the engine: every check).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// The files searched, highest precedence first, relative to the root.
pub const SEARCH_PATHS: [&str; 4] = [
    "etc/flatcar/update.conf",
    "etc/coreos/update.conf",
    "usr/share/flatcar/update.conf",
    "usr/share/coreos/update.conf",
];

/// The update server Flatcar machines use when SERVER is not set.
pub const DEFAULT_SERVER: &str = "https://public.update.flatcar-linux.net/v1/update/";
pub const DEFAULT_GROUP: &str = "stable";

#[derive(Debug, thiserror::Error)]
pub enum UpdateConfError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
}

/// Where the update server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    Url(String),
    /// `SERVER=disabled`: no update checks (boots are still marked good).
    Disabled,
}

/// The merged settings, with where each came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateConf {
    values: BTreeMap<String, (String, PathBuf)>,
}

impl UpdateConf {
    /// Reads every file that exists under `root`. A missing file is fine; an unreadable one
    /// is an error (silently ignoring it could point a machine at the wrong server).
    pub fn load(root: &Path) -> Result<UpdateConf, UpdateConfError> {
        let mut conf = UpdateConf::default();
        for rel in SEARCH_PATHS {
            let path = root.join(rel);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(UpdateConfError::Read {
                        path,
                        error: source,
                    })
                }
            };
            conf.merge(&text, &path);
        }
        Ok(conf)
    }

    /// Parses one file's text; keys already set by an earlier file keep their value. Within
    /// one file the last line setting a key wins, as in update_engine's key-value store.
    pub fn merge(&mut self, text: &str, path: &Path) {
        let file: BTreeMap<String, String> = parse(text, path).into_iter().collect();
        for (key, value) in file {
            self.values
                .entry(key)
                .or_insert((value, path.to_path_buf()));
        }
    }

    /// A raw value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|(v, _)| v.as_str())
    }

    /// The file a key's value came from.
    pub fn source(&self, key: &str) -> Option<&Path> {
        self.values.get(key).map(|(_, p)| p.as_path())
    }

    /// The first of several keys that is set (e.g. `LOCKSMITHD_REBOOT_WINDOW_START`, then
    /// `REBOOT_WINDOW_START`).
    pub fn get_any(&self, keys: &[&str]) -> Option<&str> {
        keys.iter().find_map(|k| self.get(k))
    }

    pub fn group(&self) -> &str {
        self.get("GROUP")
            .filter(|g| !g.is_empty())
            .unwrap_or(DEFAULT_GROUP)
    }

    pub fn server(&self) -> Server {
        match self.get("SERVER") {
            Some(s) if s.eq_ignore_ascii_case("disabled") => Server::Disabled,
            Some(s) if !s.is_empty() => Server::Url(s.to_string()),
            _ => Server::Url(DEFAULT_SERVER.to_string()),
        }
    }

    pub fn machine_alias(&self) -> Option<&str> {
        self.get("MACHINE_ALIAS").filter(|a| !a.is_empty())
    }

    /// DOWNLOAD_USER and DOWNLOAD_PASSWORD, when both are set.
    pub fn download_credentials(&self) -> Option<(&str, &str)> {
        Some((self.get("DOWNLOAD_USER")?, self.get("DOWNLOAD_PASSWORD")?))
    }
}

/// The `KEY=VALUE` pairs of one file's text, in file order: `#` starts a comment line, keys
/// and values are trimmed, one pair of surrounding quotes is stripped from the value. A line
/// without `=` is skipped with a warning naming `path` and the line number. The one parser of
/// this format (update.conf, and locksmith's FleetLock group file).
pub fn parse(text: &str, path: &Path) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            tracing::warn!(file = %path.display(), line = n + 1, "ignoring line without '=': {line:?}");
            continue;
        };
        pairs.push((key.trim().to_string(), unquote(value.trim()).to_string()));
    }
    pairs
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    // Found by the fuzz target: within one file the first line won, where update_engine's
    // key-value store (and a shell sourcing the file) takes the last.
    #[test]
    fn within_one_file_the_last_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "etc/flatcar/update.conf",
            "SERVER=disabled\nGROUP=alpha\nSERVER=https://u.example/v1/update/\n",
        );
        let c = UpdateConf::load(dir.path()).unwrap();
        assert_eq!(c.get("SERVER"), Some("https://u.example/v1/update/"));
        assert_eq!(c.group(), "alpha");
    }

    #[test]
    fn first_file_setting_a_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "usr/share/flatcar/update.conf",
            "GROUP=stable\nSERVER=https://vendor.example/v1/update/\nMACHINE_ALIAS=base\n",
        );
        write(
            dir.path(),
            "etc/flatcar/update.conf",
            "# operator\nGROUP=\"beta\"\nREBOOT_STRATEGY='etcd-lock'\nnonsense line\n",
        );
        let c = UpdateConf::load(dir.path()).unwrap();
        assert_eq!(c.group(), "beta");
        assert_eq!(
            c.server(),
            Server::Url("https://vendor.example/v1/update/".into())
        );
        assert_eq!(c.machine_alias(), Some("base"));
        assert_eq!(c.get("REBOOT_STRATEGY"), Some("etcd-lock"));
        assert_eq!(
            c.source("GROUP"),
            Some(dir.path().join("etc/flatcar/update.conf").as_path())
        );
        assert_eq!(
            c.get_any(&["LOCKSMITHD_REBOOT_STRATEGY", "REBOOT_STRATEGY"]),
            Some("etcd-lock")
        );
    }

    #[test]
    fn defaults_and_disabled() {
        let dir = tempfile::tempdir().unwrap();
        let c = UpdateConf::load(dir.path()).unwrap();
        assert_eq!(c.group(), "stable");
        assert_eq!(c.server(), Server::Url(DEFAULT_SERVER.into()));
        assert_eq!(c.download_credentials(), None);
        write(
            dir.path(),
            "etc/flatcar/update.conf",
            "SERVER=disabled\nDOWNLOAD_USER=u\nDOWNLOAD_PASSWORD=p\n",
        );
        let c = UpdateConf::load(dir.path()).unwrap();
        assert_eq!(c.server(), Server::Disabled);
        assert_eq!(c.download_credentials(), Some(("u", "p")));
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: reading it fails with something other than NotFound.
        std::fs::create_dir_all(dir.path().join("etc/flatcar/update.conf")).unwrap();
        let err = UpdateConf::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("etc/flatcar/update.conf"), "{err}");
    }
}
