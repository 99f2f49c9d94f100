//! The test initramfs: the init, the cached Debian kernel's modules in their load order
//! (`scripts/qemu-assets`) and extra files, written by the product's initramfs writer
//! ([`fastpatch_image::initramfs`]).

use std::path::Path;

use fastpatch_image::initramfs::{self, ArchiveFile, Contents};

use crate::{io_err, FsFile, HarnessError, Result};

/// Writes the initramfs to `out`: `init` as `/init`, every module named in
/// `modules_dir/load-order`, and the load order itself.
pub fn write_initramfs(out: &Path, init: &Path, modules_dir: &Path) -> Result<()> {
    write_initramfs_with(out, init, modules_dir, &[])
}

/// Like [`write_initramfs`], plus `extra` files (their parent directories are created).
pub fn write_initramfs_with(
    out: &Path,
    init: &Path,
    modules_dir: &Path,
    extra: &[FsFile],
) -> Result<()> {
    let mut contents = Contents {
        init: std::fs::read(init).map_err(io_err(format!("reading {}", init.display())))?,
        ..Contents::default()
    };
    let order_path = modules_dir.join("load-order");
    let order = std::fs::read_to_string(&order_path)
        .map_err(io_err(format!("reading {}", order_path.display())))?;
    for name in fastpatch_boot_init::module_load_order(&order) {
        let path = modules_dir.join(&name);
        let bytes = std::fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
        contents.modules.push((name, bytes));
    }
    // The C runtime first: the dynamically linked `fastpatch` a machine's USR carries runs in
    // this root.
    for file in crate::assets::guest_runtime_files()?.iter().chain(extra) {
        contents.extra.push(ArchiveFile {
            path: file.relative()?.to_string_lossy().into_owned(),
            data: file.data.clone(),
            mode: file.mode,
        });
    }
    initramfs::write(out, &contents).map_err(|e| HarnessError::Invalid(format!("initramfs: {e}")))
}
