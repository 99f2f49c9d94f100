//! The outputs of a build: the signed payload of the sealed USR image, the bootable disk image,
//! `release.json`, and the final rename of the work directory into the output directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use fastpatch_disk::{LayoutSpec, OpenMode, USR_A_INDEX};
use fastpatch_payload::generate::{generate, GenerateOptions, GenerateReport};
use rsa::RsaPrivateKey;
use tempfile::TempDir;

use crate::error::{io_err, run_tool, sbin_tool, ImageError, Result};
use crate::{BuildOptions, Release, RELEASE_JSON};

/// Flatcar's ROOT partition number.
const ROOT_INDEX: u32 = fastpatch_boot_init::ROOT_INDEX;

/// Signs `image` as a full update payload (zstd operations; the engine reads them).
pub fn payload(image: &Path, keys: &[RsaPrivateKey], out: &Path) -> Result<GenerateReport> {
    Ok(generate(
        image,
        keys,
        out,
        &GenerateOptions::default(),
        &mut |_, _| {},
    )?)
}

/// Copies `image` to `offset` of `disk`, leaving runs of zeros as holes.
fn copy_sparse(image: &Path, disk: &Path, offset: u64) -> Result<()> {
    let mut from = File::open(image).map_err(io_err(format!("opening {}", image.display())))?;
    let mut to = OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(io_err(format!("opening {}", disk.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = offset;
    loop {
        let n = from
            .read(&mut buf)
            .map_err(io_err(format!("reading {}", image.display())))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            to.seek(SeekFrom::Start(at))
                .and_then(|_| to.write_all(&buf[..n]))
                .map_err(io_err(format!("writing {}", disk.display())))?;
        }
        at += n as u64;
    }
    to.sync_all()
        .map_err(io_err(format!("syncing {}", disk.display())))
}

/// Makes the bootable disk: Flatcar's layout (USR-A good at priority 1, USR-B empty), the
/// sealed USR image in USR-A, and an empty ext4 ROOT labelled `ROOT`.
pub fn disk(image: &Path, out: &Path, opts: &BuildOptions) -> Result<()> {
    let spec = LayoutSpec {
        total_size: opts.disk_size,
        usr_size: opts.slot_size,
        ..LayoutSpec::default()
    };
    if opts.disk_size < spec.minimum_total() {
        return Err(ImageError::Invalid(format!(
            "--disk-size {} is too small for two {}-byte slots (at least {} bytes)",
            opts.disk_size,
            opts.slot_size,
            spec.minimum_total()
        )));
    }
    let created = fastpatch_disk::create(out, &spec, false)?;
    drop(created);
    let disk = fastpatch_disk::Disk::open(out, OpenMode::ReadOnly)?;
    let (usr_offset, _) = disk.partition_byte_range(USR_A_INDEX)?;
    let (root_offset, root_len) = disk.partition_byte_range(ROOT_INDEX)?;
    drop(disk);
    copy_sparse(image, out, usr_offset)?;
    run_tool(
        Command::new(sbin_tool("mkfs.ext4"))
            .args(["-q", "-F", "-t", "ext4", "-L", "ROOT"])
            .arg("-E")
            .arg(format!("offset={root_offset},nodiscard"))
            .arg(out)
            .arg(format!("{}k", root_len / 1024)),
    )?;
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(io_err(format!("reading {}", path.display())))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Writes `release.json`, makes every output durable, and moves the work directory to `out`
/// (replacing what was there only now, when everything is built).
pub fn finish(tmp: TempDir, release: &Release, out: &Path) -> Result<()> {
    let json = serde_json::to_vec_pretty(release)
        .map_err(|e| ImageError::Invalid(format!("encoding release.json: {e}")))?;
    std::fs::write(tmp.path().join(RELEASE_JSON), json).map_err(io_err("writing release.json"))?;
    for entry in std::fs::read_dir(tmp.path()).map_err(io_err("listing the build"))? {
        let path = entry.map_err(io_err("listing the build"))?.path();
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io_err(format!("syncing {}", path.display())))?;
    }
    if std::fs::symlink_metadata(out).is_ok() {
        std::fs::remove_dir_all(out).map_err(io_err(format!("replacing {}", out.display())))?;
    }
    let built = tmp.keep();
    std::fs::rename(&built, out).map_err(io_err(format!(
        "moving {} to {}",
        built.display(),
        out.display()
    )))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)
            .and_then(|f| f.sync_all())
            .map_err(io_err(format!("syncing {}", parent.display())))?;
    }
    Ok(())
}

/// Checks `release.json` against the files beside it (`fastpatch image verify`).
pub fn check_hashes(dir: &Path) -> Result<Release> {
    let path = dir.join(RELEASE_JSON);
    let text =
        std::fs::read_to_string(&path).map_err(io_err(format!("reading {}", path.display())))?;
    let release: Release = serde_json::from_str(&text)
        .map_err(|e| ImageError::Invalid(format!("{}: {e}", path.display())))?;
    for (file, want) in [
        (crate::USR_IMAGE, &release.usr_image_sha256),
        (crate::PAYLOAD, &release.payload_sha256),
    ] {
        let got = sha256_file(&dir.join(file))?;
        if &got != want {
            return Err(ImageError::Invalid(format!(
                "{file}: SHA-256 {got} does not match release.json ({want})"
            )));
        }
    }
    Ok(release)
}
