//! Initramfs archives (cpio "newc"): `/init`, the kernel modules with their load order under
//! the paths fastpatch's init reads them from, `/dev/console` (the kernel opens it for init's
//! stdio before devtmpfs is mounted), the mount points, and any extra files.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Component, Path};

use cpio::newc::{trailer, Builder, ModeFileType};
use fastpatch_boot_init::{MODULE_DIR, MODULE_ORDER_FILE};

use crate::error::{io_err, ImageError, Result};

/// The directories every initramfs has: API mounts, the USR and ROOT mount points, modules.
const FIXED_DIRS: [&str; 8] = [
    "/dev", "/proc", "/sys", "/run", "/usr", "/var", "/lib", MODULE_DIR,
];

/// One regular file in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    /// Path inside the archive (a leading `/` is ignored; no `..`).
    pub path: String,
    pub data: Vec<u8>,
    /// Permission bits, e.g. 0o644.
    pub mode: u32,
}

/// What goes into an initramfs.
#[derive(Debug, Default)]
pub struct Contents {
    /// The `/init` program.
    pub init: Vec<u8>,
    /// Modules as (plain `NAME.ko` file name, bytes), in load order: dependencies first.
    pub modules: Vec<(String, Vec<u8>)>,
    pub extra: Vec<ArchiveFile>,
}

struct Archive<W: Write> {
    out: Option<W>,
    ino: u32,
}

impl<W: Write> Archive<W> {
    fn entry(&mut self, name: &str, kind: ModeFileType, perm: u32, data: &[u8]) -> Result<()> {
        self.ino += 1;
        let size = u32::try_from(data.len())
            .map_err(|_| ImageError::Invalid(format!("{name} is too large for cpio")))?;
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
        let out = self
            .out
            .take()
            .ok_or_else(|| ImageError::Invalid("initramfs writer used after an error".into()))?;
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

fn relative(path: &str) -> Result<String> {
    let rel = Path::new(path.trim_start_matches('/'));
    let ok = rel.components().all(|c| matches!(c, Component::Normal(_)))
        && rel.components().next().is_some();
    if !ok {
        return Err(ImageError::Invalid(format!(
            "initramfs path {path:?} must be a plain path inside the archive"
        )));
    }
    Ok(rel.to_string_lossy().into_owned())
}

/// Writes the initramfs to `out` under a private name, then renames it into place: a reader
/// (a QEMU still booting the previous archive) never sees a half-written one.
pub fn write(out: &Path, contents: &Contents) -> Result<()> {
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    write_archive(&tmp, contents).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    std::fs::rename(&tmp, out).map_err(io_err(format!("renaming to {}", out.display())))
}

fn write_archive(out: &Path, contents: &Contents) -> Result<()> {
    let file = File::create(out).map_err(io_err(format!("creating {}", out.display())))?;
    let mut ar = Archive {
        out: Some(BufWriter::new(file)),
        ino: 0,
    };
    for dir in FIXED_DIRS {
        ar.entry(dir, ModeFileType::Directory, 0o755, &[])?;
    }
    ar.char_device("/dev/console", 5, 1)?;
    ar.entry("/init", ModeFileType::Regular, 0o755, &contents.init)?;
    let mut order = String::new();
    for (name, bytes) in &contents.modules {
        if name.contains('/') || !name.ends_with(".ko") {
            return Err(ImageError::Invalid(format!(
                "module file name {name:?} must be NAME.ko"
            )));
        }
        let path = format!("{MODULE_DIR}/{name}");
        ar.entry(&path, ModeFileType::Regular, 0o644, bytes)?;
        order.push_str(name);
        order.push('\n');
    }
    ar.entry(
        MODULE_ORDER_FILE,
        ModeFileType::Regular,
        0o644,
        order.as_bytes(),
    )?;
    // Parent directories of the extra files, each once (the fixed ones exist already).
    let mut dirs: BTreeSet<String> = FIXED_DIRS
        .iter()
        .map(|d| d.trim_start_matches('/').to_string())
        .collect();
    for file in &contents.extra {
        let rel = relative(&file.path)?;
        let parts: Vec<&str> = rel.split('/').collect();
        let mut prefix = String::new();
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
        .ok_or_else(|| ImageError::Invalid("initramfs writer lost".into()))?;
    let mut w = trailer(out_w).map_err(io_err("writing the cpio trailer"))?;
    w.flush()
        .map_err(io_err(format!("writing {}", out.display())))?;
    Ok(())
}
