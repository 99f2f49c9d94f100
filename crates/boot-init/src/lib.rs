//! The pure parts of fastpatch's initramfs `/init`: the boot configuration read from the kernel
//! command line, the exit-code protocol the QEMU harness reads, os-release parsing and the
//! wording of the boot chooser's decision. The binary (`src/main.rs`) does the I/O.
//!
//! Kernel command line keys (all optional):
//! - `fastpatch.disk=/dev/vda` — the boot disk whose GPT holds the USR slots.
//! - `fastpatch.os=/init` — the program the init execs after mounting the chosen USR slot at
//!   `/usr` (a path in the initramfs, or inside the slot when it starts with `/usr/`).
//!   Default: this same binary in its "OS" mode (argv\[0\] `fastpatch-os`). The init stays
//!   PID 1: it starts the OS as a child, reaps orphans, and when the OS exits ends the machine
//!   with [`GuestExit::OsOk`] (status 0) or [`GuestExit::OsFailed`] (anything else).
//! - `fastpatch.os_arg=WORD` (repeatable) — arguments for the OS program, in order.
//! - `fastpatch.net=0` — leave the network down (default: bring up the first non-loopback
//!   interface with QEMU user-net addresses).
//! - `fastpatch.probe=http://10.0.2.2:PORT/PATH` — the OS mode fetches this URL and prints it.
//! - `fastpatch.mark_good=1` — the OS mode marks the booted slot good before powering off.
//! - `fastpatch.disk_timeout_ms=10000` — how long to wait for the boot disk to appear.
//! - `fastpatch.root=9` — the partition number of ROOT (Flatcar: 9), mounted read-write on
//!   `/var` when it holds an ext4 file system: the state that must survive a reboot lives
//!   there. `fastpatch.root=0` leaves it alone.

use std::time::Duration;

use fastpatch_disk::{Partition, SlotAttrs, USR_A_INDEX, USR_B_INDEX};

/// Where the chosen USR slot is mounted, read-only.
pub const USR_MOUNT: &str = "/usr";
/// Where the ROOT partition is mounted read-write (state that survives reboots).
pub const ROOT_MOUNT: &str = "/var";
/// Flatcar's ROOT partition number.
pub const ROOT_INDEX: u32 = 9;
/// The file in the initramfs listing the modules to load, dependencies first.
pub const MODULE_ORDER_FILE: &str = "/lib/modules/load-order";
/// The directory of the (uncompressed) modules in the initramfs.
pub const MODULE_DIR: &str = "/lib/modules";
/// argv\[0\] that selects the built-in "OS" mode of the init binary.
pub const OS_MODE_ARGV0: &str = "fastpatch-os";
/// argv\[0\] that selects the health-check mode: exit 0 when the slot says it is healthy.
pub const HEALTH_MODE_ARGV0: &str = "fastpatch-health";
/// The test OS's health marker inside a USR slot (`ok` = healthy), at /usr/lib/... when mounted.
pub const HEALTH_FILE: &str = "/usr/lib/fastpatch-test/health";
/// The boot facts the init hands to the OS, as KEY=VALUE lines (also passed in the environment).
pub const BOOT_ENV_FILE: &str = "/run/fastpatch/boot.env";
/// Prefix of the one machine-readable summary line each stage prints to the console.
pub const RESULT_PREFIX: &str = "FASTPATCH-RESULT";

/// QEMU user networking: the guest address, its prefix length and the gateway (the host).
pub const GUEST_ADDR: [u8; 4] = [10, 0, 2, 15];
pub const GUEST_PREFIX: u8 = 24;
pub const HOST_GATEWAY: [u8; 4] = [10, 0, 2, 2];

/// How the guest ends, as the value written to QEMU's `isa-debug-exit` port. QEMU then exits
/// with status `(value << 1) | 1`, so the harness can tell these apart from a crash (status 0
/// after a plain power-off, or a timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// The OS came up and did everything it was asked to.
    OsOk,
    /// The OS came up but a check failed (probe, os-release, marking good).
    OsFailed,
    /// The init failed before the handover (modules, disk, mount, exec).
    InitFailed,
    /// The boot chooser found no bootable USR slot.
    NoBootableSlot,
}

impl GuestExit {
    /// The byte written to the debug-exit port.
    pub fn port_value(self) -> u8 {
        match self {
            GuestExit::OsOk => 0x10,
            GuestExit::OsFailed => 0x11,
            GuestExit::InitFailed => 0x12,
            GuestExit::NoBootableSlot => 0x13,
        }
    }

    /// The exit status QEMU reports for it.
    pub fn qemu_status(self) -> i32 {
        (i32::from(self.port_value()) << 1) | 1
    }

    /// The inverse of [`GuestExit::qemu_status`].
    pub fn from_qemu_status(status: i32) -> Option<GuestExit> {
        [
            GuestExit::OsOk,
            GuestExit::OsFailed,
            GuestExit::InitFailed,
            GuestExit::NoBootableSlot,
        ]
        .into_iter()
        .find(|e| e.qemu_status() == status)
    }
}

/// The init's configuration, from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub disk: String,
    /// The OS program; `None` means this binary's own OS mode.
    pub os: Option<String>,
    pub os_args: Vec<String>,
    pub net: bool,
    pub probe: Option<String>,
    pub mark_good: bool,
    pub disk_timeout: Duration,
    /// The ROOT partition number; `None` leaves ROOT unmounted.
    pub root: Option<u32>,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            disk: "/dev/vda".to_string(),
            os: None,
            os_args: Vec::new(),
            net: true,
            probe: None,
            mark_good: false,
            disk_timeout: Duration::from_secs(10),
            root: Some(ROOT_INDEX),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("kernel command line: {key}={value:?} is not valid: {why}")]
    Invalid {
        key: String,
        value: String,
        why: &'static str,
    },
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "1" | "yes" | "true" | "on" => Ok(true),
        "0" | "no" | "false" | "off" => Ok(false),
        _ => Err(ConfigError::Invalid {
            key: key.to_string(),
            value: value.to_string(),
            why: "expected 0 or 1",
        }),
    }
}

impl BootConfig {
    /// Reads the `fastpatch.*` keys of a kernel command line; other words are ignored. The
    /// last occurrence of a key wins, as with the kernel's own parameters.
    pub fn from_cmdline(cmdline: &str) -> Result<BootConfig, ConfigError> {
        let mut cfg = BootConfig::default();
        for word in cmdline.split_whitespace() {
            let Some(rest) = word.strip_prefix("fastpatch.") else {
                continue;
            };
            let (key, value) = rest.split_once('=').unwrap_or((rest, "1"));
            let invalid = |why| ConfigError::Invalid {
                key: format!("fastpatch.{key}"),
                value: value.to_string(),
                why,
            };
            match key {
                "disk" if value.starts_with('/') => cfg.disk = value.to_string(),
                "disk" => return Err(invalid("expected an absolute device path")),
                "os" if value.starts_with('/') => cfg.os = Some(value.to_string()),
                "os" => return Err(invalid("expected an absolute path")),
                "os_arg" => cfg.os_args.push(value.to_string()),
                "net" => cfg.net = parse_bool(word, value)?,
                "probe" if value.starts_with("http://") => cfg.probe = Some(value.to_string()),
                "probe" => return Err(invalid("expected an http:// URL")),
                "mark_good" => cfg.mark_good = parse_bool(word, value)?,
                "disk_timeout_ms" => {
                    let ms: u64 = value
                        .parse()
                        .map_err(|_| invalid("expected milliseconds"))?;
                    cfg.disk_timeout = Duration::from_millis(ms);
                }
                "root" => {
                    let n: u32 = value
                        .parse()
                        .map_err(|_| invalid("expected a partition number"))?;
                    cfg.root = (n != 0).then_some(n);
                }
                _ => tracing::warn!("unknown kernel parameter {word}, ignored"),
            }
        }
        Ok(cfg)
    }
}

/// How the machine ends when the OS program exits on its own: its exit code, or `None` when
/// a signal killed it.
pub fn os_exit_verdict(code: Option<i32>) -> GuestExit {
    match code {
        Some(0) => GuestExit::OsOk,
        _ => GuestExit::OsFailed,
    }
}

/// The value of `VERSION=` in an os-release file (quotes stripped), if present.
pub fn os_release_version(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("VERSION=")?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        Some(value.to_string())
    })
}

/// The test OS's health verdict from the content of [`HEALTH_FILE`] (`None`: file missing).
/// Only `ok` is healthy: a slot must say so, so a broken image is never taken for a good one.
pub fn health_verdict(content: Option<&str>) -> Result<(), String> {
    match content.map(str::trim) {
        Some("ok") => Ok(()),
        Some(other) => Err(format!("{HEALTH_FILE} says {other:?}")),
        None => Err(format!("{HEALTH_FILE} is missing")),
    }
}

/// The module file names of a load-order file, skipping blanks and `#` comments.
pub fn module_load_order(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// "A" or "B" for the Flatcar USR partition numbers, else "#N".
pub fn slot_name(index: u32) -> String {
    match index {
        USR_A_INDEX => "A".to_string(),
        USR_B_INDEX => "B".to_string(),
        n => format!("#{n}"),
    }
}

fn attrs_text(a: SlotAttrs) -> String {
    format!(
        "priority={} tries={} successful={}",
        a.priority,
        a.tries,
        u8::from(a.successful)
    )
}

/// One console line per USR slot, as the chooser saw them.
pub fn describe_slots(slots: &[Partition]) -> Vec<String> {
    slots
        .iter()
        .map(|p| {
            let why = if p.attrs.bootable() && p.attrs.priority > 0 {
                "bootable"
            } else if p.attrs.priority == 0 {
                "not bootable: priority 0"
            } else {
                "not bootable: no tries left and never marked successful"
            };
            format!(
                "USR-{} (partition {}, {}): {} ({why})",
                slot_name(p.index),
                p.index,
                p.name,
                attrs_text(p.attrs)
            )
        })
        .collect()
}

/// Why the chooser picked this slot, in one line.
pub fn describe_choice(index: u32, before: SlotAttrs, after: SlotAttrs) -> String {
    let tries = if before.tries != after.tries {
        format!(
            "trial boot: tries {} -> {} written to the GPT before mounting",
            before.tries, after.tries
        )
    } else {
        "marked successful: no tries to spend".to_string()
    };
    format!(
        "chose USR-{} (partition {}): highest priority bootable slot (priority {}); {tries}",
        slot_name(index),
        index,
        before.priority
    )
}

/// The machine-readable summary line the harness parses: `FASTPATCH-RESULT stage k=v ...`.
pub fn result_line(stage: &str, fields: &[(&str, &str)]) -> String {
    let mut line = format!("{RESULT_PREFIX} {stage}");
    for (k, v) in fields {
        line.push(' ');
        line.push_str(k);
        line.push('=');
        line.push_str(v);
    }
    line
}

/// Parses a [`result_line`] back: `(stage, fields)`. Values contain no spaces.
pub fn parse_result_line(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let rest = line.trim().split_once(RESULT_PREFIX)?.1;
    let mut words = rest.split_whitespace();
    let stage = words.next()?.to_string();
    let fields = words
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some((stage, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_defaults_and_overrides() {
        let cfg = BootConfig::from_cmdline("console=ttyS0 quiet").unwrap();
        assert_eq!(cfg, BootConfig::default());
        let cfg = BootConfig::from_cmdline(
            "console=ttyS0 fastpatch.disk=/dev/vdb fastpatch.net=0 fastpatch.mark_good \
             fastpatch.probe=http://10.0.2.2:8080/x fastpatch.os=/usr/bin/os \
             fastpatch.disk_timeout_ms=250 fastpatch.root=0 fastpatch.os_arg=--root \
             fastpatch.os_arg=/var",
        )
        .unwrap();
        assert_eq!(cfg.os_args, ["--root", "/var"]);
        assert_eq!(cfg.root, None);
        assert_eq!(cfg.disk, "/dev/vdb");
        assert!(!cfg.net);
        assert!(cfg.mark_good);
        assert_eq!(cfg.probe.as_deref(), Some("http://10.0.2.2:8080/x"));
        assert_eq!(cfg.os.as_deref(), Some("/usr/bin/os"));
        assert_eq!(cfg.disk_timeout, Duration::from_millis(250));
    }

    #[test]
    fn cmdline_rejects_bad_values() {
        for bad in [
            "fastpatch.disk=vda",
            "fastpatch.net=maybe",
            "fastpatch.probe=https://x",
            "fastpatch.os=init",
            "fastpatch.disk_timeout_ms=soon",
            "fastpatch.root=nine",
        ] {
            let err = BootConfig::from_cmdline(bad).unwrap_err();
            assert!(err.to_string().contains("is not valid"), "{bad}: {err}");
        }
    }

    #[test]
    fn exit_codes_round_trip_and_differ() {
        let all = [
            GuestExit::OsOk,
            GuestExit::OsFailed,
            GuestExit::InitFailed,
            GuestExit::NoBootableSlot,
        ];
        for e in all {
            assert_eq!(GuestExit::from_qemu_status(e.qemu_status()), Some(e));
            assert_ne!(e.qemu_status(), 0);
        }
        assert_eq!(GuestExit::OsOk.qemu_status(), 33);
        assert_eq!(GuestExit::from_qemu_status(0), None);
        assert_eq!(GuestExit::from_qemu_status(1), None);
    }

    #[test]
    fn os_release_version_variants() {
        assert_eq!(
            os_release_version("NAME=x\nVERSION=1\n").as_deref(),
            Some("1")
        );
        assert_eq!(
            os_release_version("VERSION=\"3975.2.0\"\nVERSION_ID=3975.2.0").as_deref(),
            Some("3975.2.0")
        );
        assert_eq!(os_release_version("VERSION_ID=2\n"), None);
    }

    #[test]
    fn only_a_clean_os_exit_is_ok() {
        assert_eq!(os_exit_verdict(Some(0)), GuestExit::OsOk);
        assert_eq!(os_exit_verdict(Some(1)), GuestExit::OsFailed);
        assert_eq!(os_exit_verdict(None), GuestExit::OsFailed);
    }

    #[test]
    fn only_ok_is_healthy() {
        assert_eq!(health_verdict(Some("ok\n")), Ok(()));
        assert!(health_verdict(Some("fail"))
            .unwrap_err()
            .contains("\"fail\""));
        assert!(health_verdict(None).unwrap_err().contains("missing"));
    }

    #[test]
    fn load_order_skips_comments() {
        assert_eq!(
            module_load_order("# deps first\nvirtio.ko\n\n virtio_blk.ko \n"),
            vec!["virtio.ko", "virtio_blk.ko"]
        );
    }

    #[test]
    fn result_lines_round_trip() {
        let line = result_line("chooser", &[("slot", "B"), ("partition", "4")]);
        assert_eq!(line, "FASTPATCH-RESULT chooser slot=B partition=4");
        let (stage, fields) = parse_result_line(&format!("[  1.2] {line}\r")).unwrap();
        assert_eq!(stage, "chooser");
        assert_eq!(fields[1], ("partition".to_string(), "4".to_string()));
        assert_eq!(parse_result_line("something else"), None);
    }

    #[test]
    fn choice_wording() {
        let before = SlotAttrs {
            priority: 2,
            tries: 1,
            successful: false,
        };
        let after = SlotAttrs { tries: 0, ..before };
        let text = describe_choice(USR_B_INDEX, before, after);
        assert!(
            text.contains("USR-B") && text.contains("tries 1 -> 0"),
            "{text}"
        );
        let good = SlotAttrs {
            priority: 1,
            tries: 0,
            successful: true,
        };
        assert!(describe_choice(USR_A_INDEX, good, good).contains("marked successful"));
    }
}
