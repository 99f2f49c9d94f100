//! The kernel, modules and tools (via `scripts/qemu-assets`) and the static init build.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io_err, run_command, HarnessError, Result};

/// The repository root (this crate lives in `crates/qemu-harness`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cached kernel and modules from `scripts/qemu-assets`.
#[derive(Debug, Clone)]
pub struct Assets {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    /// Uncompressed `.ko` files plus `load-order`.
    pub modules_dir: PathBuf,
    pub kernel_version: String,
}

impl Assets {
    /// Runs `scripts/qemu-assets` (installs QEMU and e2fsprogs through apt when missing, fetches
    /// the kernel on first use; a no-op when all is cached) and returns the cached files.
    pub fn ensure() -> Result<Assets> {
        let root = repo_root();
        let dir = std::env::var_os("FASTPATCH_QEMU_ASSETS")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/qemu-assets"));
        run_command(
            Command::new(root.join("scripts/qemu-assets")).env("FASTPATCH_QEMU_ASSETS", &dir),
        )?;
        let kernel_version = std::fs::read_to_string(dir.join("kernel-version"))
            .map_err(io_err(format!("reading {}/kernel-version", dir.display())))?
            .trim()
            .to_string();
        let assets = Assets {
            kernel: dir.join("vmlinuz"),
            modules_dir: dir.join("modules"),
            dir,
            kernel_version,
        };
        for needed in [&assets.kernel, &assets.modules_dir.join("load-order")] {
            if !needed.is_file() {
                return Err(HarnessError::Invalid(format!(
                    "scripts/qemu-assets finished but {} is missing",
                    needed.display()
                )));
            }
        }
        Ok(assets)
    }
}

impl Assets {
    /// The Debian bookworm root filesystem tarball (systemd, D-Bus, udev, the Debian kernel),
    /// made once by `scripts/debian-rootfs` with mmdebstrap and cached beside the kernel.
    pub fn debian_rootfs(&self) -> Result<PathBuf> {
        run_command(
            Command::new(repo_root().join("scripts/debian-rootfs"))
                .env("FASTPATCH_QEMU_ASSETS", &self.dir),
        )?;
        Ok(self.dir.join("debian-rootfs.tar"))
    }
}

/// The target triple of the static init.
const INIT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds `fastpatch-boot-init` statically linked (glibc, `crt-static`) into `target_dir`
/// and returns the binary. Cargo makes this a quick no-op when nothing changed.
pub fn build_static_init(target_dir: &Path) -> Result<PathBuf> {
    build_static_binary(target_dir, "fastpatch-boot-init", "fastpatch-boot-init")
}

/// Builds binary `bin` of workspace package `package` statically linked into `target_dir`
/// (e.g. the engine, to run as the guest's OS) and returns its path.
pub fn build_static_binary(target_dir: &Path, package: &str, bin: &str) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let root = repo_root();
    run_command(
        Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--quiet", "-p", package, "--bin", bin, "--target"])
            .arg(INIT_TARGET)
            .arg("--manifest-path")
            .arg(root.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", target_dir)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            // Symbols stripped: a smaller initramfs unpacks faster in the guest.
            .env(
                "RUSTFLAGS",
                "-C target-feature=+crt-static -C debuginfo=0 -C strip=symbols",
            ),
    )?;
    let path = target_dir.join(INIT_TARGET).join("debug").join(bin);
    if !path.is_file() {
        return Err(HarnessError::Invalid(format!(
            "cargo built {package} but {} is missing",
            path.display()
        )));
    }
    Ok(path)
}
