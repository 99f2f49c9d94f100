//! The initramfs: a cpio "newc" archive with `/init`, the kernel modules and their load order,
//! `/dev/console` (the kernel opens it for init's stdio before devtmpfs is mounted) and the
//! mount points.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use cpio::newc::{trailer, Builder, ModeFileType};
use fastpatch_boot_init::{MODULE_DIR, MODULE_ORDER_FILE};

use crate::{io_err, FsFile, HarnessError, Result};

/// The directories every initramfs has: API mounts, the USR and ROOT mount points, modules.
const FIXED_DIRS: [&str; 8] = [
    "/dev", "/proc", "/sys", "/run", "/usr", "/var", "/lib", MODULE_DIR,
];

struct Archive<W: Write> {
    out: Option<W>,
    ino: u32,
}

impl<W: Write> Archive<W> {
    fn entry(&mut self, name: &str, kind: ModeFileType, perm: u32, data: &[u8]) -> Result<()> {
        self.ino += 1;
        let size = u32::try_from(data.len())
            .map_err(|_| HarnessError::Invalid(format!("{name} is too large for cpio")))?;
        let nlink = if matches!(kind, ModeFileType::Directory) {
            2
        } else {
            1
        };
        let builder = Builder::new(name.trim_start_matches('/'))
            .ino(self.ino)
            .mode(perm)
            .set_mode_file_type(kind)
            .nlink(nlink);
        self.finish_entry(builder, name, data, size)
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) -> Result<()> {
        self.ino += 1;
        let builder = Builder::new(name.trim_start_matches('/'))
            .ino(self.ino)
            .mode(0o600)
            .set_mode_file_type(ModeFileType::Char)
            .rdev_major(major)
            .rdev_minor(minor);
        self.finish_entry(builder, name, &[], 0)
    }

    fn finish_entry(&mut self, builder: Builder, name: &str, data: &[u8], size: u32) -> Result<()> {
        let out = self.out.take().ok_or_else(|| {
            HarnessError::Invalid("initramfs writer used after an error".to_string())
        })?;
        let mut w = builder.write(out, size);
        w.write_all(data)
            .map_err(io_err(format!("writing {name} to the initramfs")))?;
        self.out = Some(
            w.finish()
                .map_err(io_err(format!("finishing {name} in the initramfs")))?,
        );
        Ok(())
    }
}

/// Writes the initramfs to `out`: `init` as `/init`, every module named in
/// `modules_dir/load-order` under [`MODULE_DIR`], and the load order itself.
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
    // Built under a private name and renamed into place, so concurrent test processes (and a
    // QEMU still reading the previous archive) never see a half-written one.
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    write_archive(&tmp, init, modules_dir, extra)?;
    std::fs::rename(&tmp, out).map_err(io_err(format!("renaming to {}", out.display())))
}

fn write_archive(out: &Path, init: &Path, modules_dir: &Path, extra: &[FsFile]) -> Result<()> {
    let file = File::create(out).map_err(io_err(format!("creating {}", out.display())))?;
    let mut ar = Archive {
        out: Some(BufWriter::new(file)),
        ino: 0,
    };
    for dir in FIXED_DIRS {
        ar.entry(dir, ModeFileType::Directory, 0o755, &[])?;
    }
    ar.char_device("/dev/console", 5, 1)?;
    let init_bytes = std::fs::read(init).map_err(io_err(format!("reading {}", init.display())))?;
    ar.entry("/init", ModeFileType::Regular, 0o755, &init_bytes)?;
    let order_path = modules_dir.join("load-order");
    let order = std::fs::read_to_string(&order_path)
        .map_err(io_err(format!("reading {}", order_path.display())))?;
    for name in fastpatch_boot_init::module_load_order(&order) {
        if name.contains('/') {
            return Err(HarnessError::Invalid(format!(
                "{}: module name {name:?} has a slash",
                order_path.display()
            )));
        }
        let path = modules_dir.join(&name);
        let bytes = std::fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
        ar.entry(
            &format!("{MODULE_DIR}/{name}"),
            ModeFileType::Regular,
            0o644,
            &bytes,
        )?;
    }
    ar.entry(
        MODULE_ORDER_FILE,
        ModeFileType::Regular,
        0o644,
        order.as_bytes(),
    )?;
    // Parent directories of the extra files, each once (the fixed ones exist already).
    let mut dirs: std::collections::BTreeSet<String> = FIXED_DIRS
        .iter()
        .map(|d| d.trim_start_matches('/').to_string())
        .collect();
    for file in extra {
        let rel = file.relative()?.to_string_lossy().into_owned();
        let mut prefix = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if dirs.insert(prefix.clone()) {
                ar.entry(&prefix, ModeFileType::Directory, 0o755, &[])?;
            }
        }
        ar.entry(&rel, ModeFileType::Regular, file.mode, &file.data)?;
    }
    let out_w = ar
        .out
        .take()
        .ok_or_else(|| HarnessError::Invalid("initramfs writer lost".to_string()))?;
    let mut w = trailer(out_w).map_err(io_err("writing the cpio trailer"))?;
    w.flush()
        .map_err(io_err(format!("writing {}", out.display())))?;
    Ok(())
}
