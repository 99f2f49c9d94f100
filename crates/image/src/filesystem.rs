//! The USR file system: an ext4 image made by Debian's `mkfs.ext4 -d` from the staged /usr,
//! without a journal (it is mounted read-only, under dm-verity), shrunk to its minimum.

use std::path::Path;
use std::process::Command;

use walkdir::WalkDir;

use crate::error::{io_err, run_tool, sbin_tool, ImageError, Result};

const MIB: u64 = 1 << 20;

/// A size that surely holds `dir`: its files rounded to 4 KiB blocks, a block per entry for
/// inodes and directories, 10 % and 64 MiB on top. `resize2fs -M` trims it afterwards.
fn estimate(dir: &Path) -> Result<u64> {
    let mut bytes = 0u64;
    for entry in WalkDir::new(dir) {
        let entry =
            entry.map_err(|e| ImageError::Invalid(format!("walking {}: {e}", dir.display())))?;
        let len = entry
            .metadata()
            .map_err(|e| ImageError::Invalid(format!("reading {}: {e}", entry.path().display())))?
            .len();
        bytes += len.div_ceil(4096) * 4096 + 4096;
    }
    Ok((bytes + bytes / 10 + 64 * MIB).div_ceil(MIB) * MIB)
}

/// Makes `out`: an ext4 file system labelled `label` holding `dir`, as small as it can be.
/// Returns its length (a multiple of 4096).
pub fn make_usr_fs(dir: &Path, out: &Path, label: &str) -> Result<u64> {
    let size = estimate(dir)?;
    let file = std::fs::File::create(out).map_err(io_err(format!("creating {}", out.display())))?;
    file.set_len(size)
        .map_err(io_err(format!("sizing {}", out.display())))?;
    drop(file);
    run_tool(
        Command::new(sbin_tool("mkfs.ext4"))
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0"])
            .args(["-O", "^has_journal", "-L", label])
            .args(["-E", "root_owner=0:0", "-d"])
            .arg(dir)
            .arg(out),
    )?;
    run_tool(
        Command::new(sbin_tool("e2fsck"))
            .args(["-f", "-y"])
            .arg(out),
    )?;
    run_tool(Command::new(sbin_tool("resize2fs")).args(["-M"]).arg(out))?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(out)
        .map_err(io_err(format!("opening {}", out.display())))?;
    let len = fastpatch_payload::seal::ext4_bytes(&mut f)?;
    f.set_len(len)
        .map_err(io_err(format!("truncating {}", out.display())))?;
    Ok(len)
}
