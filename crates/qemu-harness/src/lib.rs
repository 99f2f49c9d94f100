//! The QEMU boot-proof harness: everything needed to boot a fastpatch disk image in
//! `qemu-system-x86_64 -accel tcg` and inspect it between boots.
//!
//! - [`Assets::ensure`] runs `scripts/qemu-assets` (QEMU, e2fsprogs and the Debian kernel with
//!   its virtio/ext4 modules, cached).
//! - [`build_static_init`] builds `fastpatch-boot-init` as a static binary in its own target
//!   directory (so the `crt-static` flag does not rebuild anyone else's dependencies);
//!   [`build_guest_fastpatch`] takes the guests' `fastpatch` from the workspace's test build.
//! - [`write_initramfs`] packs `/init`, the modules and the C runtime of the guests'
//!   `fastpatch` ([`GUEST_RUNTIME`]) into a cpio (newc) archive.
//! - [`write_usr_image`] makes an ext4 USR image holding `/lib/os-release` with a VERSION (and
//!   with [`write_usr_image_with`], more files: the OS program, update.conf) and writes it into
//!   a slot of the disk image; [`format_root`] puts an ext4 on ROOT for state across reboots.
//! - [`boot`] runs QEMU with a hard timeout, keeps the serial log and parses the guest's
//!   `FASTPATCH-RESULT` lines.
//!
//! - [`HostServer`] runs the real fastpatch-server on the host for the guest (10.0.2.2);
//!   [`OsVersion`] is one version of the test OS (its USR image, with the `fastpatch`
//!   engine from [`Lab::engine`]) and its signed payload ([`SigningKey`]).
//! - [`boot_until`] ends a boot whose OS runs forever once a condition holds (e.g. the server
//!   recorded the guest's report); [`BootSpec::kill_after`] cuts the power mid-write.
//!
//! [`Lab`] ties these together for tests: one static init and initramfs per test process;
//! [`Machine`] is one disk image booted again and again with numbered serial logs.

mod assets;
mod initramfs;
mod machine;
mod os_image;
mod qemu;
mod server;
mod testbed;
mod usr_image;

pub use assets::{
    build_guest_fastpatch, build_static_binary, build_static_init, guest_runtime_files, repo_root,
    Assets, GUEST_RUNTIME,
};
pub use initramfs::{write_initramfs, write_initramfs_with};
pub use machine::{engine_layout, test_layout, Machine};
pub use os_image::{OsVersion, SigningKey, ENGINE_IN_USR};
pub use qemu::{boot, boot_until, BootOutcome, BootSpec, GuestResult};
pub use server::{HostServer, ADMIN_TOKEN, GUEST_HOST};
pub use testbed::{Testbed, GROUP, MACHINE_ID, TEST_ENGINE_LAYER};
pub use usr_image::{
    format_root, health_file, make_ext4_image, os_release, write_filesystem, write_usr_image,
    write_usr_image_with, FsFile,
};

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Everything that went wrong in the harness, with the command or file involved.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("{command} failed ({status}){}", if .stderr.is_empty() { String::new() } else { format!(":\n{}", .stderr) })]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("disk: {0}")]
    Disk(#[from] fastpatch_disk::DiskError),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io {
        what,
        error: source,
    }
}

/// Runs a command to completion; a non-zero exit becomes [`HarnessError::Command`] with its
/// stderr.
pub(crate) fn run_command(cmd: &mut std::process::Command) -> Result<()> {
    let command = format!("{cmd:?}");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(io_err(format!("starting {command}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(HarnessError::Command {
        command,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// The shared, built-once parts of a boot test: assets, the static init and the initramfs.
#[derive(Debug)]
pub struct Lab {
    pub assets: Assets,
    pub init: PathBuf,
    pub initramfs: PathBuf,
    /// Where serial logs go (kept after the test, for CI artifacts).
    pub log_dir: PathBuf,
    /// The cargo target dir of the test build (the guests' `fastpatch` comes from it).
    target: PathBuf,
    /// The guests' `fastpatch` binary, built on first use.
    engine: OnceLock<Result<PathBuf, String>>,
}

impl Lab {
    /// Prepares the lab once per process under `target_tmp` (a test's `CARGO_TARGET_TMPDIR`).
    /// Later calls return the same lab; a failure is returned to every caller.
    pub fn get(target_tmp: &Path) -> Result<&'static Lab, String> {
        static LAB: OnceLock<Result<Lab, String>> = OnceLock::new();
        LAB.get_or_init(|| Lab::prepare(target_tmp).map_err(|e| format!("{e}")))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn prepare(target_tmp: &Path) -> Result<Lab> {
        let assets = Assets::ensure()?;
        // A sibling of the test's tmp dir: inside the same target directory, but its own
        // cargo target dir because of the different RUSTFLAGS.
        let target = target_tmp.parent().unwrap_or(target_tmp);
        let init = build_static_init(&target.join("boot-init-static"))?;
        let dir = target_tmp.join("qemu-lab");
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let initramfs = dir.join("initramfs.cpio");
        write_initramfs(&initramfs, &init, &assets.modules_dir)?;
        let log_dir = std::env::var_os("FASTPATCH_QEMU_LOGS")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("qemu-logs"));
        std::fs::create_dir_all(&log_dir)
            .map_err(io_err(format!("creating {}", log_dir.display())))?;
        Ok(Lab {
            assets,
            init,
            initramfs,
            log_dir,
            target: target.to_path_buf(),
            engine: OnceLock::new(),
        })
    }

    /// The guests' `fastpatch` binary ([`build_guest_fastpatch`]: the test build's, without
    /// symbols), to run as the guest's OS (`fastpatch engine run`) or in its `/usr/bin`; made
    /// once per process.
    pub fn engine(&self) -> Result<&Path, String> {
        self.engine
            .get_or_init(|| {
                build_guest_fastpatch(&self.target, &self.target.join("qemu-guest"))
                    .map_err(|e| format!("building the guests' fastpatch binary: {e}"))
            })
            .as_ref()
            .map(PathBuf::as_path)
            .map_err(Clone::clone)
    }

    /// A separate initramfs with `extra` files added (e.g. an engine binary and
    /// `/etc/machine-id`), written as `<name>.cpio` next to the default one.
    pub fn initramfs_with(&self, name: &str, extra: &[FsFile]) -> Result<PathBuf> {
        let out = self.initramfs.with_file_name(format!("{name}.cpio"));
        write_initramfs_with(&out, &self.init, &self.assets.modules_dir, extra)?;
        Ok(out)
    }

    /// A boot of `disk` with this lab's kernel and initramfs; `name` names the serial log.
    pub fn spec(&self, name: &str, disk: &Path) -> BootSpec {
        BootSpec::new(
            &self.assets.kernel,
            &self.initramfs,
            disk,
            &self.log_dir.join(format!("{name}.log")),
        )
    }
}
