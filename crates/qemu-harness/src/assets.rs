//! The kernel, modules and tools (via `scripts/qemu-assets`), the static init build and the
//! guests' `fastpatch` binary with the C runtime it links.

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

/// A cargo command on this workspace with `target_dir` as its target dir, in the environment
/// cargo was started in: without the variables cargo sets for a running test (its package's
/// `CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, …). Build scripts watch some of them (ring's watches
/// `CARGO_MANIFEST_DIR`), so inheriting them would rebuild half the tree on every call.
fn cargo_command(target_dir: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let root = repo_root();
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root).env("CARGO_TARGET_DIR", target_dir);
    const SET_FOR_TESTS: [&str; 9] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BIN_NAME",
    ];
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if SET_FOR_TESTS.contains(&name.as_ref())
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
        {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
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
    run_command(
        cargo_command(target_dir)
            .args(["build", "--quiet", "-p", package, "--bin", bin, "--target"])
            .arg(INIT_TARGET)
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

/// The `fastpatch` binary the guests run (their engine, locksmithd and locksmithctl): the
/// workspace's own debug build in `target_dir`, made by the same cargo command and features as
/// the test build (`cargo test --workspace --all-features`, which builds the binary for the
/// `fastpatch` package's tests), so nothing is compiled a second time; a no-op when the test
/// build is current. Copied without symbols into `out_dir` (a smaller image and initramfs).
/// It links the C runtime dynamically: [`guest_runtime_files`] are what it needs.
/// `fastpatch-engined` (the engine daemon alone, what the OS image's unit runs) is copied
/// beside it the same way.
pub fn build_guest_fastpatch(target_dir: &Path, out_dir: &Path) -> Result<PathBuf> {
    run_command(
        cargo_command(target_dir)
            .args([
                "test",
                "--quiet",
                "--workspace",
                "--all-features",
                "--no-run",
            ])
            .args(["--test", "it"]),
    )?;
    std::fs::create_dir_all(out_dir).map_err(io_err(format!("creating {}", out_dir.display())))?;
    for name in ["fastpatch-engined", "fastpatch"] {
        let built = target_dir.join("debug").join(name);
        if !built.is_file() {
            return Err(HarnessError::Invalid(format!(
                "cargo built the workspace's tests but {} is missing",
                built.display()
            )));
        }
        run_command(
            Command::new("strip")
                .arg("--strip-all")
                .arg("-o")
                .arg(out_dir.join(name))
                .arg(&built),
        )?;
    }
    Ok(out_dir.join("fastpatch"))
}

/// The host's C runtime that the guests' dynamically linked `fastpatch` loads (the dynamic
/// loader, libc, libm, libgcc_s; the host and the guests' Debian are both bookworm), at the
/// paths the loader looks for them.
pub const GUEST_RUNTIME: [&str; 4] = [
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib/x86_64-linux-gnu/libm.so.6",
    "/lib/x86_64-linux-gnu/libgcc_s.so.1",
];

/// [`GUEST_RUNTIME`] read from the host, for an initramfs that runs the dynamic `fastpatch`.
pub fn guest_runtime_files() -> Result<Vec<crate::FsFile>> {
    GUEST_RUNTIME
        .iter()
        .map(|path| {
            let data = std::fs::read(path).map_err(io_err(format!(
                "reading {path} (the C runtime of the guests' fastpatch binary)"
            )))?;
            Ok(crate::FsFile::new(
                path.trim_start_matches('/'),
                data,
                0o755,
            ))
        })
        .collect()
}
