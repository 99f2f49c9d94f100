//! locksmithd configuration: update.conf (`<root>/etc/flatcar/update.conf`, then
//! `<root>/usr/share/flatcar/update.conf`; the first file that sets a key wins; `KEY=VALUE`,
//! quotes stripped), overridden by `LOCKSMITHD_*` environment variables. Window keys are read
//! both plain (`REBOOT_WINDOW_START`) and prefixed (`LOCKSMITHD_REBOOT_WINDOW_START`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fastpatch_update_conf::{UpdateConf, UpdateConfError};

use crate::etcd::EtcdConfig;
use crate::strategy::Strategy;
use crate::window::{parse_length, parse_zone, Window, WindowError};

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "unknown REBOOT_STRATEGY {0:?} (want reboot, etcd-lock, off, best-effort or fleetlock)"
    )]
    Strategy(String),
    #[error(transparent)]
    Window(#[from] WindowError),
    #[error("invalid {key}: {value:?}")]
    Value { key: String, value: String },
    #[error("strategy fleetlock needs LOCKSMITHD_FLEETLOCK_URL")]
    NoFleetlockUrl,
    #[error("unknown REBOOT_METHOD {0:?} (want firmware or kexec)")]
    RebootMethod(String),
}

/// How locksmithd reboots (`REBOOT_METHOD`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RebootMethod {
    /// Through the firmware and the boot chooser: logind's Reboot, or `REBOOT_COMMAND`.
    #[default]
    Firmware,
    /// `load_command` (default [`KEXEC_LOAD_COMMAND`]) loads the next slot's kernel and
    /// spends its try, then systemd's kexec.target starts it; if loading fails, the firmware
    /// reboot follows.
    Kexec { load_command: String },
}

/// What loads the next boot's kernel for `REBOOT_METHOD=kexec` (`KEXEC_LOAD_COMMAND`).
pub const KEXEC_LOAD_COMMAND: &str = "fastpatch boot kexec";

impl RebootMethod {
    fn from_settings(s: &Settings) -> Result<RebootMethod, ConfigError> {
        match s.get("REBOOT_METHOD").as_deref() {
            None | Some("firmware") => Ok(RebootMethod::Firmware),
            Some("kexec") => Ok(RebootMethod::Kexec {
                load_command: s
                    .get("KEXEC_LOAD_COMMAND")
                    .unwrap_or_else(|| KEXEC_LOAD_COMMAND.to_string()),
            }),
            Some(other) => Err(ConfigError::RebootMethod(other.to_string())),
        }
    }
}

impl std::fmt::Display for RebootMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RebootMethod::Firmware => "firmware",
            RebootMethod::Kexec { .. } => "kexec",
        })
    }
}

/// The merged key/value view: `LOCKSMITHD_*` environment variables over update.conf, read by
/// the same reader as the engine's (`fastpatch-update-conf`: `/etc/flatcar`, `/etc/coreos`,
/// `/usr/share/flatcar`, `/usr/share/coreos`; the first file that sets a key wins).
pub struct Settings {
    file: UpdateConf,
    env: BTreeMap<String, String>,
}

impl Settings {
    /// Reads the update.conf files under `root` and the given environment. An update.conf
    /// that exists but cannot be read is an error, as it is for the engine: skipping it could
    /// change the reboot strategy or the lock group without a word.
    pub fn load(
        root: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, UpdateConfError> {
        let file = UpdateConf::load(root)?;
        let env = env
            .into_iter()
            .filter(|(k, v)| k.starts_with("LOCKSMITHD_") && !v.is_empty())
            .collect();
        Ok(Settings { file, env })
    }

    /// Only `LOCKSMITHD_<key>` (env, then file): for keys whose plain name means something else
    /// in update.conf (`GROUP` is the update channel there).
    pub fn get_prefixed(&self, key: &str) -> Option<String> {
        let pre = format!("LOCKSMITHD_{key}");
        self.env
            .get(&pre)
            .map(String::as_str)
            .or_else(|| self.file.get(&pre))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    /// `LOCKSMITHD_<key>` from the environment, then the file's `LOCKSMITHD_<key>`, then the
    /// file's plain `<key>`.
    pub fn get(&self, key: &str) -> Option<String> {
        let pre = format!("LOCKSMITHD_{key}");
        self.env
            .get(&pre)
            .map(String::as_str)
            .or_else(|| self.file.get_any(&[pre.as_str(), key]))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }
}

/// Everything locksmithd needs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub root: PathBuf,
    pub strategy: Strategy,
    pub window: Option<Window>,
    pub group: String,
    pub etcd: Option<EtcdConfig>,
    pub fleetlock_url: Option<String>,
    /// Extra CA (PEM) to trust for the FleetLock server (`LOCKSMITHD_FLEETLOCK_CA_FILE`).
    pub fleetlock_ca_file: Option<PathBuf>,
    /// Tie our hold to an etcd lease of this TTL (stale-holder recovery); `None`: plain holder.
    pub lease_ttl: Option<Duration>,
    pub reboot_command: Option<String>,
    pub reboot_method: RebootMethod,
    pub reboot_delay: Duration,
    pub broadcast: bool,
    pub lock_retry: Duration,
    pub machine_id_file: PathBuf,
    pub dbus_address: Option<String>,
    /// Command whose success means "this boot is good" (`BOOT_GOOD_COMMAND`; on a systemd
    /// machine by default [`BOOT_COMPLETE_COMMAND`]); `None`: good at start.
    pub boot_good_command: Option<String>,
    /// Prometheus metrics are served on this Unix socket (`METRICS_SOCKET`, default
    /// [`METRICS_SOCKET`] under the root; `none`: not served).
    pub metrics_socket: Option<PathBuf>,
}

/// Where locksmithd serves its metrics by default (under the root; the unit's
/// `RuntimeDirectory=locksmith`). The engine's are at `/run/fastpatch/engine-metrics.sock`.
pub const METRICS_SOCKET: &str = "run/locksmith/metrics.sock";

fn duration(s: &Settings, key: &str, default: Duration) -> Result<Duration, ConfigError> {
    match s.get(key) {
        None => Ok(default),
        Some(v) => parse_length(&v)
            .ok()
            .and_then(|d| d.to_std().ok())
            .ok_or(ConfigError::Value {
                key: key.into(),
                value: v,
            }),
    }
}

impl DaemonConfig {
    pub fn from_settings(root: &Path, s: &Settings) -> Result<Self, ConfigError> {
        let strategy_raw = s.get("REBOOT_STRATEGY").unwrap_or_default();
        let strategy =
            Strategy::parse(&strategy_raw).ok_or(ConfigError::Strategy(strategy_raw.clone()))?;
        let zone = match s.get("REBOOT_WINDOW_TIMEZONE") {
            Some(z) => parse_zone(&z)?,
            None => local_zone(root),
        };
        let window = Window::from_config(
            s.get("REBOOT_WINDOW_START").as_deref(),
            s.get("REBOOT_WINDOW_LENGTH").as_deref(),
            zone,
        )?;
        let etcd = s.get("ENDPOINT").map(|e| {
            let mut c = EtcdConfig::local().with_endpoints(&e);
            c.ca_file = s.get("ETCD_CAFILE").map(PathBuf::from);
            c.cert_file = s.get("ETCD_CERTFILE").map(PathBuf::from);
            c.key_file = s.get("ETCD_KEYFILE").map(PathBuf::from);
            c.username = s.get("ETCD_USERNAME");
            c.password = s.get("ETCD_PASSWORD");
            c
        });
        let fleetlock_url = s.get("FLEETLOCK_URL");
        if strategy == Strategy::FleetLock && fleetlock_url.is_none() {
            return Err(ConfigError::NoFleetlockUrl);
        }
        let lease_ttl = match s.get("LEASE_TTL") {
            None => None,
            Some(_) => Some(duration(s, "LEASE_TTL", Duration::ZERO)?),
        };
        let broadcast = match s.get("BROADCAST").as_deref() {
            None | Some("true") | Some("1") | Some("yes") => true,
            Some("false") | Some("0") | Some("no") => false,
            Some(v) => {
                return Err(ConfigError::Value {
                    key: "BROADCAST".into(),
                    value: v.into(),
                })
            }
        };
        Ok(DaemonConfig {
            root: root.to_path_buf(),
            strategy,
            window,
            group: s.get_prefixed("GROUP").unwrap_or_default(),
            etcd,
            fleetlock_url,
            fleetlock_ca_file: s.get("FLEETLOCK_CA_FILE").map(PathBuf::from),
            lease_ttl,
            reboot_command: s.get("REBOOT_COMMAND"),
            reboot_method: RebootMethod::from_settings(s)?,
            reboot_delay: duration(s, "REBOOT_DELAY", Duration::from_secs(300))?,
            broadcast,
            lock_retry: duration(s, "LOCK_RETRY", Duration::from_secs(30))?,
            machine_id_file: s
                .get("MACHINE_ID_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("etc/machine-id")),
            dbus_address: s.get("DBUS_ADDRESS"),
            boot_good_command: s
                .get("BOOT_GOOD_COMMAND")
                .or_else(|| systemd_booted(root).then(|| BOOT_COMPLETE_COMMAND.to_string())),
            metrics_socket: match s.get("METRICS_SOCKET").as_deref() {
                None => Some(root.join(METRICS_SOCKET)),
                Some("none") => None,
                Some(p) => Some(PathBuf::from(p)),
            },
        })
    }
}

/// On a systemd machine a boot is good once `boot-complete.target` is reached (the update's
/// health checks run before it: fastpatch-health-check.service), so a reboot slot is released
/// only after the new boot passed them.
pub const BOOT_COMPLETE_COMMAND: &str = "systemctl is-active --quiet boot-complete.target";

/// Whether systemd runs the machine under `root` (sd_booted(3): `/run/systemd/system`).
fn systemd_booted(root: &Path) -> bool {
    root.join("run/systemd/system").is_dir()
}

/// The machine's zone from `<root>/etc/localtime` (a link into zoneinfo), else UTC.
pub fn local_zone(root: &Path) -> chrono_tz::Tz {
    std::fs::read_link(root.join("etc/localtime"))
        .ok()
        .and_then(|p| {
            let s = p.to_string_lossy().into_owned();
            s.split_once("zoneinfo/").map(|(_, z)| z.to_string())
        })
        .and_then(|z| parse_zone(&z).ok())
        .unwrap_or(chrono_tz::Tz::UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boot_is_good_at_boot_complete_on_systemd_and_at_start_without_it() {
        let root = tempfile::tempdir().unwrap();
        let load = |env: Vec<(String, String)>| {
            let s = Settings::load(root.path(), env).unwrap();
            DaemonConfig::from_settings(root.path(), &s)
                .unwrap()
                .boot_good_command
        };
        assert_eq!(load(vec![]), None);
        std::fs::create_dir_all(root.path().join("run/systemd/system")).unwrap();
        assert_eq!(load(vec![]).as_deref(), Some(BOOT_COMPLETE_COMMAND));
        let own = vec![("LOCKSMITHD_BOOT_GOOD_COMMAND".into(), "true".into())];
        assert_eq!(load(own).as_deref(), Some("true"));
    }

    #[test]
    fn files_and_env() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc/flatcar")).unwrap();
        std::fs::create_dir_all(r.join("usr/share/flatcar")).unwrap();
        std::fs::write(
            r.join("usr/share/flatcar/update.conf"),
            "GROUP=stable\nREBOOT_STRATEGY=reboot\nREBOOT_WINDOW_LENGTH=1h\n",
        )
        .unwrap();
        std::fs::write(
            r.join("etc/flatcar/update.conf"),
            "# ours\nREBOOT_STRATEGY=\"etcd-lock\"\nLOCKSMITHD_REBOOT_WINDOW_START='Thu 04:00'\n",
        )
        .unwrap();
        let s = Settings::load(
            r,
            vec![
                (
                    "LOCKSMITHD_ENDPOINT".into(),
                    "http://a:2379,http://b:2379".into(),
                ),
                ("LOCKSMITHD_ETCD_CAFILE".into(), "/ca.pem".into()),
                (
                    "LOCKSMITHD_REBOOT_WINDOW_TIMEZONE".into(),
                    "Europe/Berlin".into(),
                ),
                ("OTHER".into(), "x".into()),
            ],
        )
        .unwrap();
        let c = DaemonConfig::from_settings(r, &s).unwrap();
        assert_eq!(c.strategy, Strategy::EtcdLock);
        let w = c.window.unwrap();
        assert_eq!(w.length, chrono::Duration::hours(1));
        assert_eq!(w.zone, chrono_tz::Europe::Berlin);
        let e = c.etcd.unwrap();
        assert_eq!(e.endpoints, vec!["http://a:2379", "http://b:2379"]);
        assert_eq!(e.ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(c.reboot_delay, Duration::from_secs(300));
        assert!(c.broadcast);
        // update.conf's GROUP is the update channel, not the lock group.
        assert_eq!(c.group, "");
        // Defaults: best-effort, no window.
        let empty = tempfile::tempdir().unwrap();
        let c = DaemonConfig::from_settings(
            empty.path(),
            &Settings::load(empty.path(), vec![]).unwrap(),
        )
        .unwrap();
        assert_eq!(c.strategy, Strategy::BestEffort);
        assert!(c.window.is_none());
        assert_eq!(
            c.metrics_socket,
            Some(empty.path().join(METRICS_SOCKET)),
            "metrics are served by default"
        );
        // Bad values are errors.
        let bad = |k: &str, v: &str| {
            let s = Settings::load(
                empty.path(),
                vec![(format!("LOCKSMITHD_{k}"), v.to_string())],
            )
            .unwrap();
            DaemonConfig::from_settings(empty.path(), &s)
                .unwrap_err()
                .to_string()
        };
        assert!(bad("REBOOT_STRATEGY", "sometimes").contains("unknown REBOOT_STRATEGY"));
        assert!(bad("REBOOT_WINDOW_START", "04:00").contains("must be set together"));
        assert!(bad("REBOOT_STRATEGY", "fleetlock").contains("FLEETLOCK_URL"));
        assert!(bad("LEASE_TTL", "soon").contains("LEASE_TTL"));
    }

    #[test]
    fn an_unreadable_update_conf_is_an_error_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        // A directory where the file should be: unreadable even for root.
        std::fs::create_dir_all(root.path().join("etc/flatcar/update.conf")).unwrap();
        let err = Settings::load(root.path(), vec![]).err().expect("an error");
        assert!(
            err.to_string().contains("etc/flatcar/update.conf"),
            "error names the file: {err}"
        );
    }

    #[test]
    fn coreos_era_and_vendor_files_are_read_like_the_engine_reads_them() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc/coreos")).unwrap();
        std::fs::create_dir_all(r.join("usr/share/coreos")).unwrap();
        std::fs::write(r.join("etc/coreos/update.conf"), "REBOOT_STRATEGY=off\n").unwrap();
        std::fs::write(
            r.join("usr/share/coreos/update.conf"),
            "REBOOT_STRATEGY=reboot\nLOCKSMITHD_REBOOT_DELAY=7s\n",
        )
        .unwrap();
        let c = DaemonConfig::from_settings(r, &Settings::load(r, vec![]).unwrap()).unwrap();
        assert_eq!(c.strategy, Strategy::Off);
        assert_eq!(c.reboot_delay, Duration::from_secs(7));
    }
}
