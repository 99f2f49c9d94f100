//! USR slot contents: an ext4 image (Debian's `mkfs.ext4 -d`) holding `/lib/os-release` with
//! a VERSION, written into a USR partition of a disk image.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use fastpatch_disk::{Disk, OpenMode};

use crate::{io_err, run_command, HarnessError, Result};

fn mkfs_ext4() -> &'static str {
    if Path::new("/usr/sbin/mkfs.ext4").exists() {
        "/usr/sbin/mkfs.ext4"
    } else if Path::new("/sbin/mkfs.ext4").exists() {
        "/sbin/mkfs.ext4"
    } else {
        "mkfs.ext4"
    }
}

/// Makes an ext4 image of exactly `size` bytes at `out` whose root holds `lib/os-release` with
/// `VERSION=<version>` (the file sits at `/usr/lib/os-release` once mounted on /usr).
pub fn make_ext4_image(out: &Path, size: u64, version: &str, label: &str) -> Result<()> {
    if version.is_empty() || version.chars().any(|c| c.is_whitespace() || c == '"') {
        return Err(HarnessError::Invalid(format!(
            "version {version:?} must be non-empty without spaces or quotes"
        )));
    }
    let tree = tempfile::tempdir().map_err(io_err("creating a temp dir"))?;
    let lib = tree.path().join("lib");
    std::fs::create_dir_all(&lib).map_err(io_err(format!("creating {}", lib.display())))?;
    let os_release = format!(
        "NAME=\"fastpatch test OS\"\nID=fastpatch-test\nVERSION={version}\nVERSION_ID={version}\n"
    );
    std::fs::write(lib.join("os-release"), os_release).map_err(io_err("writing os-release"))?;
    let file = std::fs::File::create(out).map_err(io_err(format!("creating {}", out.display())))?;
    file.set_len(size)
        .map_err(io_err(format!("sizing {}", out.display())))?;
    drop(file);
    run_command(
        Command::new(mkfs_ext4())
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                label,
                "-E",
                "root_owner=0:0",
                "-d",
            ])
            .arg(tree.path())
            .arg(out),
    )
}

/// Writes an ext4 USR image with `version` into partition `index` of the disk image at `disk`,
/// filling the whole partition.
pub fn write_usr_image(disk: &Path, index: u32, version: &str) -> Result<()> {
    let (offset, len) = Disk::open(disk, OpenMode::ReadOnly)?.partition_byte_range(index)?;
    let tmp = tempfile::NamedTempFile::new().map_err(io_err("creating a temp file"))?;
    make_ext4_image(tmp.path(), len, version, &format!("USR-{index}"))?;
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
