//! File systems for the disk image: ext4 images made with Debian's `mkfs.ext4 -d` from a list
//! of files, written into a partition. A USR slot holds `/lib/os-release` with its VERSION
//! (`/usr/lib/os-release` once mounted on /usr), plus whatever else a test puts there (the
//! OS program, update.conf, health checks); ROOT holds state that survives reboots.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};
use std::process::Command;

use fastpatch_disk::{Disk, OpenMode};

use crate::{io_err, run_command, HarnessError, Result};

/// One file to put into a file system image or the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsFile {
    /// Path inside the file system, relative or absolute (e.g. `lib/os-release`).
    pub path: String,
    pub data: Vec<u8>,
    /// Permission bits, e.g. 0o644 or 0o755.
    pub mode: u32,
}

impl FsFile {
    pub fn new(path: impl Into<String>, data: impl Into<Vec<u8>>, mode: u32) -> FsFile {
        FsFile {
            path: path.into(),
            data: data.into(),
            mode,
        }
    }

    /// The path relative to the file system root; rejects `..` and empty paths.
    pub(crate) fn relative(&self) -> Result<&Path> {
        let rel = Path::new(self.path.trim_start_matches('/'));
        let ok = rel.components().all(|c| matches!(c, Component::Normal(_)))
            && rel.components().next().is_some();
        if ok {
            Ok(rel)
        } else {
            Err(HarnessError::Invalid(format!(
                "file path {:?} must be a plain path inside the file system",
                self.path
            )))
        }
    }
}

/// The os-release of a test USR image with this version.
pub fn os_release(version: &str) -> Result<FsFile> {
    if version.is_empty() || version.chars().any(|c| c.is_whitespace() || c == '"') {
        return Err(HarnessError::Invalid(format!(
            "version {version:?} must be non-empty without spaces or quotes"
        )));
    }
    let text = format!(
        "NAME=\"fastpatch test OS\"\nID=fastpatch-test\nVERSION={version}\nVERSION_ID={version}\n"
    );
    Ok(FsFile::new("lib/os-release", text, 0o644))
}

/// The test OS's health marker (see `fastpatch_boot_init::HEALTH_FILE`): `ok` or `fail`.
pub fn health_file(healthy: bool) -> FsFile {
    let rel = fastpatch_boot_init::HEALTH_FILE.trim_start_matches("/usr/");
    FsFile::new(rel, if healthy { "ok\n" } else { "fail\n" }, 0o644)
}

fn mkfs_ext4() -> &'static str {
    if Path::new("/usr/sbin/mkfs.ext4").exists() {
        "/usr/sbin/mkfs.ext4"
    } else if Path::new("/sbin/mkfs.ext4").exists() {
        "/sbin/mkfs.ext4"
    } else {
        "mkfs.ext4"
    }
}

/// Makes an ext4 image of exactly `size` bytes at `out` holding `files`.
pub fn make_ext4_image(out: &Path, size: u64, label: &str, files: &[FsFile]) -> Result<()> {
    let tree = tempfile::tempdir().map_err(io_err("creating a temp dir"))?;
    for file in files {
        let dest = tree.path().join(file.relative()?);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("creating {}", parent.display())))?;
        }
        std::fs::write(&dest, &file.data)
            .and_then(|()| {
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(file.mode))
            })
            .map_err(io_err(format!("writing {}", dest.display())))?;
    }
    let f = std::fs::File::create(out).map_err(io_err(format!("creating {}", out.display())))?;
    f.set_len(size)
        .map_err(io_err(format!("sizing {}", out.display())))?;
    drop(f);
    run_command(
        Command::new(mkfs_ext4())
            .args(["-q", "-F", "-t", "ext4", "-L", label])
            .args(["-E", "root_owner=0:0", "-d"])
            .arg(tree.path())
            .arg(out),
    )
}

/// Fills partition `index` of the disk image with an ext4 file system holding `files`.
pub fn write_filesystem(disk: &Path, index: u32, label: &str, files: &[FsFile]) -> Result<()> {
    let (offset, len) = Disk::open(disk, OpenMode::ReadOnly)?.partition_byte_range(index)?;
    let tmp = tempfile::NamedTempFile::new().map_err(io_err("creating a temp file"))?;
    make_ext4_image(tmp.path(), len, label, files)?;
    let mut image = Vec::new();
    std::fs::File::open(tmp.path())
        .and_then(|mut f| f.read_to_end(&mut image))
        .map_err(io_err(format!("reading {}", tmp.path().display())))?;
    if image.len() as u64 != len {
        return Err(HarnessError::Invalid(format!(
            "mkfs.ext4 made {} bytes for a {len}-byte partition",
            image.len()
        )));
    }
    let mut f = OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(io_err(format!("opening {}", disk.display())))?;
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.write_all(&image))
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!(
            "writing partition {index} of {}",
            disk.display()
        )))
}

/// Writes a USR image with `version` (and nothing else) into slot partition `index`.
pub fn write_usr_image(disk: &Path, index: u32, version: &str) -> Result<()> {
    write_usr_image_with(disk, index, version, &[])
}

/// Writes a USR image with `version` plus `extra` files into slot partition `index`.
pub fn write_usr_image_with(
    disk: &Path,
    index: u32,
    version: &str,
    extra: &[FsFile],
) -> Result<()> {
    let mut files = vec![os_release(version)?];
    files.extend_from_slice(extra);
    write_filesystem(disk, index, &format!("USR-{index}"), &files)
}

/// Formats ROOT (Flatcar partition 9), which the init mounts read-write on /var.
pub fn format_root(disk: &Path, files: &[FsFile]) -> Result<()> {
    write_filesystem(disk, fastpatch_boot_init::ROOT_INDEX, "ROOT", files)
}
