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
//! - `fastpatch.engine=/usr/bin/fastpatch` — the OS is the fastpatch update engine at this path
//!   (normally inside the chosen USR slot, so every version brings its own engine): the init
//!   writes the engine's config layers for this boot (see [`EngineLaunch`]) and starts
//!   `PATH engine run --config ...`. Not together with `fastpatch.os`.
//! - `fastpatch.log=FILTER` — the engine's log filter (`FASTPATCH_LOG`), default `info`.

use std::time::Duration;

#[cfg(feature = "cli")]
pub mod cli;
pub mod kexec_reboot;
pub mod slot;
pub mod sys;
pub mod verity;

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

/// The engine's config layers, in the order the init passes them (later ones win): the init's
/// defaults for an engine that is the whole OS, the vendor layer in the USR slot, the admin
/// layer in the initramfs' /etc, and the facts of this boot.
pub const ENGINE_DEFAULTS_LAYER: &str = "/run/fastpatch/engine-defaults.toml";
pub const ENGINE_VENDOR_LAYER: &str = "/usr/lib/fastpatch/engine.d";
pub const ENGINE_ADMIN_LAYER: &str = "/etc/fastpatch/engine.d";
pub const ENGINE_BOOT_LAYER: &str = "/run/fastpatch/engine-boot.toml";
/// The payload signing key the engine trusts: Flatcar's path, inside the USR slot.
pub const ENGINE_TRUSTED_KEY: &str = "/usr/share/update_engine/update-payload-key.pub.pem";
/// Where the engine keeps its state: on ROOT (mounted on /var), so it survives reboots.
pub const ENGINE_STATE_FILE: &str = "/var/lib/fastpatch/engine.json";
pub const ENGINE_INSTALL_STATE_DIR: &str = "/var/lib/fastpatch/install";

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
    /// The fastpatch binary to run as the OS in engine mode.
    pub engine: Option<String>,
    /// The engine's log filter.
    pub log: String,
    /// Boot the chosen slot's own kernel (`fastpatch.kexec=1`; see [`slot`]).
    pub kexec: bool,
    /// What the slot stage executes in the new root (`fastpatch.init=`).
    pub init: String,
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
            engine: None,
            log: "info".to_string(),
            kexec: false,
            init: slot::DEFAULT_INIT.to_string(),
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
                "engine" if value.starts_with('/') => cfg.engine = Some(value.to_string()),
                "engine" => return Err(invalid("expected an absolute path")),
                "log" if !value.is_empty() => cfg.log = value.to_string(),
                "log" => return Err(invalid("expected a log filter")),
                "os_arg" => cfg.os_args.push(value.to_string()),
                "net" => cfg.net = parse_bool(word, value)?,
                "kexec" => cfg.kexec = parse_bool(word, value)?,
                "init" if value.starts_with('/') => cfg.init = value.to_string(),
                "init" => return Err(invalid("expected an absolute path")),
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
        if let (Some(_), Some(engine)) = (&cfg.os, &cfg.engine) {
            return Err(ConfigError::Invalid {
                key: "fastpatch.engine".to_string(),
                value: engine.clone(),
                why: "fastpatch.os is set too; give one OS",
            });
        }
        Ok(cfg)
    }
}

/// How the init starts the fastpatch engine as the OS: the two layers it writes under /run and
/// the command line. The defaults layer makes the engine fit a machine without systemd and
/// D-Bus (health check `/init health`, reboot `/init reboot`, reboot as soon as an update is
/// staged, state on ROOT); the vendor (`/usr`) and admin (`/etc`) layers may override any of
/// it. The boot layer holds what only the init knows (the slot it chose, the disk) and comes
/// last, so nothing overrides a fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineLaunch {
    pub program: String,
    pub args: Vec<String>,
    /// Content of [`ENGINE_DEFAULTS_LAYER`].
    pub defaults: String,
    /// Content of [`ENGINE_BOOT_LAYER`].
    pub boot: String,
}

/// A TOML basic string (quotes, backslashes and control characters escaped).
pub fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The engine launch for a boot of USR partition `slot_index` on `disk`. Only the two Flatcar
/// USR slots (A = 3, B = 4) can be handed to the engine.
pub fn engine_launch(program: &str, slot_index: u32, disk: &str) -> Result<EngineLaunch, String> {
    let slot = match slot_index {
        USR_A_INDEX => "a",
        USR_B_INDEX => "b",
        n => return Err(format!("partition {n} is neither USR-A nor USR-B")),
    };
    let q = toml_string;
    let defaults = format!(
        "# Written by fastpatch's initramfs /init: the engine is the whole OS here (no systemd,\n\
         # no D-Bus). The vendor ({ENGINE_VENDOR_LAYER}) and admin ({ENGINE_ADMIN_LAYER}) layers\n\
         # override these.\n\
         root = \"/\"\n\
         dbus = false\n\
         reboot_after_update = true\n\
         state_file = {}\n\
         install_state_dir = {}\n\
         trusted_keys = [{}]\n\
         reboot_command = [\"/init\", \"reboot\"]\n\
         \n\
         [health]\n\
         commands = [[\"/init\", \"health\"]]\n",
        q(ENGINE_STATE_FILE),
        q(ENGINE_INSTALL_STATE_DIR),
        q(ENGINE_TRUSTED_KEY),
    );
    let boot = format!(
        "# Written by fastpatch's initramfs /init: facts of this boot, above every other layer.\n\
         booted_slot = {}\n\
         disk = {}\n",
        q(slot),
        q(disk)
    );
    let mut args = vec!["engine".to_string(), "run".to_string()];
    for layer in [
        ENGINE_DEFAULTS_LAYER,
        ENGINE_VENDOR_LAYER,
        ENGINE_ADMIN_LAYER,
        ENGINE_BOOT_LAYER,
    ] {
        args.push("--config".to_string());
        args.push(layer.to_string());
    }
    Ok(EngineLaunch {
        program: program.to_string(),
        args,
        defaults,
        boot,
    })
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
#[path = "lib_tests.rs"]
mod tests;
