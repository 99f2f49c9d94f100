//! The daemon's own settings (not update.conf, which stays Flatcar's): layered TOML files,
//! later files overriding earlier ones key by key.
//!
//! Default layers: `/usr/lib/fastpatch/engine.d/*.toml` (vendor), `/etc/fastpatch/engine.toml`,
//! `/etc/fastpatch/engine.d/*.toml` (admin), each directory in file-name order.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::health::OnUnhealthy;
use crate::schedule::ScheduleConfig;

/// The layers read when no `--config` is given.
pub const DEFAULT_LAYERS: [&str; 3] = [
    "/usr/lib/fastpatch/engine.d",
    "/etc/fastpatch/engine.toml",
    "/etc/fastpatch/engine.d",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {error}")]
    Parse {
        path: PathBuf,
        error: toml::de::Error,
    },
    #[error("engine config: {0}")]
    Invalid(String),
}

/// How the daemon finds the slot it booted from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootedSlot {
    /// From `mount.usr=`/`verity.usr=`/`usr=` on the kernel command line.
    Cmdline,
    A,
    B,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// systemd units that must be `active` (`systemctl is-active UNIT`).
    pub units: Vec<String>,
    /// Commands (argv) that must exit 0.
    pub commands: Vec<Vec<String>>,
    /// How long a first boot after an update may take to become healthy.
    pub timeout_secs: u64,
    /// Pause between rounds of checks.
    pub interval_secs: u64,
    /// A single check taking longer than this counts as failing.
    pub check_timeout_secs: u64,
    pub on_unhealthy: OnUnhealthy,
    /// Judge a first boot by systemd's `boot-complete.target`: the checks above run in
    /// `fastpatch-health-check.service` (`fastpatch engine health-check`), ordered before the
    /// target; the engine marks the slot good once the target is reached and gives up at once
    /// when that unit fails. Unset: on when systemd runs the machine (`/run/systemd/system`),
    /// else the engine runs the checks itself.
    pub boot_complete: Option<bool>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            units: Vec::new(),
            commands: Vec::new(),
            timeout_secs: 600,
            interval_secs: 10,
            check_timeout_secs: 60,
            on_unhealthy: OnUnhealthy::Reboot,
            boot_complete: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Payload download limit, bytes per second.
    pub download_bytes_per_sec: Option<u64>,
    /// Slot write limit, bytes per second.
    pub disk_bytes_per_sec: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownloadConfig {
    pub connect_timeout_secs: u64,
    /// Abort a transfer that delivers nothing for this long (update_engine: 10 B/s for 90 s).
    pub stall_timeout_secs: u64,
    /// Pause before retrying a failed transfer (update_engine: 20 s).
    pub retry_delay_secs: u64,
    /// Timeout of one Omaha request.
    pub omaha_timeout_secs: u64,
    /// Payload bytes between the installer's resume checkpoints (a restart re-writes at
    /// most this much).
    pub checkpoint_bytes: u64,
    /// Payload bytes between saved states of the whole-payload SHA-256 (a resume re-fetches
    /// at most this much before the installer's checkpoint, only to hash it).
    pub hash_point_bytes: u64,
    /// Ask for delta payloads (`delta_okay="true"`); the booted slot is their source. After a
    /// delta that does not fit the booted slot, the engine asks for full payloads until it
    /// restarts.
    pub delta: bool,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            connect_timeout_secs: 30,
            stall_timeout_secs: 90,
            retry_delay_secs: 20,
            omaha_timeout_secs: 60,
            checkpoint_bytes: fastpatch_payload::install::DEFAULT_CHECKPOINT_BYTES,
            hash_point_bytes: 16 << 20,
            delta: true,
        }
    }
}

/// System extensions (see [`crate::daemon::extensions`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtensionsConfig {
    /// Where the images of Flatcar's extensions (`flatcar-<NAME>-<VERSION>.raw`) live, as
    /// the machine sees it (under `root`). Must survive reboots: Flatcar's default is on
    /// ROOT; a machine whose /etc is not persistent points it at /var.
    pub dir: PathBuf,
}

impl Default for ExtensionsConfig {
    fn default() -> Self {
        ExtensionsConfig {
            dir: PathBuf::from("/etc/flatcar/sysext"),
        }
    }
}

/// Everything the daemon is told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Where update.conf, os-release, machine-id and oem-release are read (`/` in production).
    pub root: PathBuf,
    /// The disk holding USR-A/USR-B; unset: the disk of the booted USR partition.
    pub disk: Option<PathBuf>,
    pub booted_slot: BootedSlot,
    pub cmdline_path: PathBuf,
    pub state_file: PathBuf,
    /// Resume checkpoints of a payload install.
    pub install_state_dir: PathBuf,
    pub boot_id_path: PathBuf,
    /// Public keys a payload signature must verify with: PEM files, or directories of `*.pem`
    /// (the vendor's under /usr ship with each OS version; the admin's under /etc). Paths that
    /// do not exist are skipped; no key at all is an error. Any one valid signature suffices.
    pub trusted_keys: Vec<PathBuf>,
    pub app_id: String,
    pub board: String,
    /// argv of the command that reboots the machine (the health gate's last resort).
    pub reboot_command: Vec<String>,
    /// Serve `com.coreos.update1` on D-Bus (off: a machine without a bus, e.g. the
    /// initramfs-booted QEMU guest; status is then in the logs and the metrics socket).
    pub dbus: bool,
    /// D-Bus address; unset: the system bus.
    pub dbus_address: Option<String>,
    /// Run `reboot_command` once an update is staged (UPDATED_NEED_REBOOT), after its events
    /// reached the server: for machines without locksmithd. Off by default (locksmithd or an
    /// operator decides when to reboot).
    pub reboot_after_update: bool,
    /// Prometheus text metrics are served here; unset: no metrics socket.
    pub metrics_socket: Option<PathBuf>,
    pub schedule: ScheduleConfig,
    pub health: HealthConfig,
    pub limits: Limits,
    pub download: DownloadConfig,
    pub extensions: ExtensionsConfig,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            root: PathBuf::from("/"),
            disk: None,
            booted_slot: BootedSlot::Cmdline,
            cmdline_path: PathBuf::from("/proc/cmdline"),
            state_file: PathBuf::from("/var/lib/fastpatch/engine.json"),
            install_state_dir: PathBuf::from("/var/lib/fastpatch/install"),
            boot_id_path: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            trusted_keys: vec![
                PathBuf::from("/usr/share/update_engine/update-payload-key.pub.pem"),
                PathBuf::from("/usr/share/fastpatch/keys.d"),
                PathBuf::from("/etc/fastpatch/keys.d"),
            ],
            app_id: format!("{{{}}}", fastpatch_omaha::FLATCAR_APP_ID),
            board: "amd64-usr".into(),
            reboot_command: vec!["systemctl".into(), "reboot".into()],
            dbus: true,
            dbus_address: None,
            reboot_after_update: false,
            metrics_socket: Some(PathBuf::from("/run/fastpatch/engine-metrics.sock")),
            schedule: ScheduleConfig::default(),
            health: HealthConfig::default(),
            limits: Limits::default(),
            download: DownloadConfig::default(),
            extensions: ExtensionsConfig::default(),
        }
    }
}

impl DaemonConfig {
    /// Where this machine's system extension images live.
    pub fn extension_layout(&self) -> crate::daemon::extensions::Layout {
        crate::daemon::extensions::Layout::new(&self.root, &self.extensions.dir)
    }

    /// Whether the gate waits for `boot-complete.target` (see [`HealthConfig::boot_complete`]).
    pub fn gate_on_boot_complete(&self) -> bool {
        self.health
            .boot_complete
            .unwrap_or_else(|| self.root.join("run/systemd/system").is_dir())
    }

    pub fn health_timeout(&self) -> Duration {
        Duration::from_secs(self.health.timeout_secs)
    }

    /// Reads and merges the layers in order (a directory contributes its `*.toml` files in
    /// name order; a missing layer is skipped).
    pub fn load_layers<P: AsRef<Path>>(layers: &[P]) -> Result<DaemonConfig, ConfigError> {
        let mut merged = toml::Table::new();
        for layer in layers {
            for file in layer_files(layer.as_ref())? {
                let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
                    path: file.clone(),
                    error: source,
                })?;
                let table: toml::Table =
                    toml::from_str(&text).map_err(|source| ConfigError::Parse {
                        path: file.clone(),
                        error: source,
                    })?;
                // Validate each file on its own so an error names the file at fault.
                DaemonConfig::deserialize(toml::Value::Table(table.clone())).map_err(|source| {
                    ConfigError::Parse {
                        path: file.clone(),
                        error: source,
                    }
                })?;
                merge(&mut merged, table);
            }
        }
        let cfg = DaemonConfig::deserialize(toml::Value::Table(merged))
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if cfg.reboot_command.is_empty() {
            return Err(ConfigError::Invalid("reboot_command is empty".into()));
        }
        if cfg.download.checkpoint_bytes == 0 || cfg.download.hash_point_bytes == 0 {
            return Err(ConfigError::Invalid(
                "download.checkpoint_bytes and download.hash_point_bytes must be > 0".into(),
            ));
        }
        Ok(cfg)
    }
}

fn layer_files(layer: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: layer.to_path_buf(),
        error: source,
    };
    match std::fs::metadata(layer) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(read_err(e)),
        Ok(m) if m.is_dir() => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(layer)
                .map_err(read_err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            Ok(files)
        }
        Ok(_) => Ok(vec![layer.to_path_buf()]),
    }
}

/// Deep merge: tables merge key by key, anything else is replaced.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_merge_key_by_key_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let vendor = dir.path().join("vendor.d");
        std::fs::create_dir(&vendor).unwrap();
        std::fs::write(
            vendor.join("10-base.toml"),
            "root = \"/x\"\n[health]\nunits = [\"sshd.service\"]\ntimeout_secs = 300\n",
        )
        .unwrap();
        std::fs::write(vendor.join("ignored.conf"), "garbage").unwrap();
        let admin = dir.path().join("engine.toml");
        std::fs::write(
            &admin,
            "booted_slot = \"b\"\n[health]\ntimeout_secs = 60\non_unhealthy = \"report-only\"\n[schedule]\ninitial = 5\n",
        )
        .unwrap();
        let cfg = DaemonConfig::load_layers(&[
            vendor.as_path(),
            admin.as_path(),
            &dir.path().join("missing"),
        ])
        .unwrap();
        assert_eq!(cfg.root, PathBuf::from("/x"));
        assert_eq!(cfg.booted_slot, BootedSlot::B);
        assert_eq!(cfg.health.units, ["sshd.service"]);
        assert_eq!(cfg.health.timeout_secs, 60);
        assert_eq!(cfg.health.on_unhealthy, OnUnhealthy::ReportOnly);
        assert_eq!(cfg.schedule.initial, Duration::from_secs(5));
        assert_eq!(
            cfg.schedule.interval,
            ScheduleConfig::default().interval,
            "unset keys keep their defaults"
        );

        std::fs::write(&admin, "[health]\ntimeout_sec = 1\n").unwrap();
        let err = DaemonConfig::load_layers(&[admin.as_path()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("engine.toml") && err.contains("timeout_sec"),
            "{err}"
        );
    }
}
