//! Shared helpers for the disk integration tests: small images, sgdisk as the independent
//! cross-check, and byte-level comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use fastpatch_disk::{create, Disk, LayoutSpec, OpenMode};

pub const MIB: u64 = 1 << 20;

/// A small Flatcar-like layout (64 MiB) so tests stay fast.
pub fn small_spec(sector_size: u64) -> LayoutSpec {
    LayoutSpec {
        total_size: 64 * MIB,
        sector_size,
        efi_size: 2 * MIB,
        bios_boot_size: 2 * MIB,
        usr_size: 8 * MIB,
        oem_size: 2 * MIB,
        ..LayoutSpec::default()
    }
}

pub fn new_image(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    create(&path, &small_spec(512), false).expect("create test image");
    path
}

pub fn open_rw(path: &Path) -> Disk {
    Disk::open(path, OpenMode::ReadWrite).expect("open read-write")
}

/// `sgdisk -v`'s full output. sgdisk exits 0 even when it finds problems, so callers look at
/// the text.
pub fn sgdisk_verify(path: &Path) -> String {
    let out = Command::new("sgdisk").arg("-v").arg(path).output().expect(
        "sgdisk must be installed (Debian package gdisk; scripts/install-deps installs it)",
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn assert_sgdisk_clean(path: &Path) {
    let text = sgdisk_verify(path);
    assert!(
        text.contains("No problems found")
            && !text.contains("Caution")
            && !text.contains("Warning"),
        "sgdisk -v {} reported problems:\n{text}",
        path.display()
    );
}

/// One `Field: value` line of `sgdisk -i index`.
fn sgdisk_info_field(path: &Path, index: u32, field: &str) -> String {
    let out = Command::new("sgdisk")
        .arg("-i")
        .arg(index.to_string())
        .arg(path)
        .output()
        .expect("run sgdisk -i");
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{field}: ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {field:?} line in sgdisk -i output:\n{text}"))
        .trim()
        .to_string()
}

/// The attribute word of partition `index` as sgdisk reads it.
pub fn sgdisk_attributes(path: &Path, index: u32) -> u64 {
    let hex = sgdisk_info_field(path, index, "Attribute flags");
    u64::from_str_radix(&hex, 16).expect("hex attribute flags")
}

/// The unique GUID of partition `index` as sgdisk reads it (lower case).
pub fn sgdisk_unique_guid(path: &Path, index: u32) -> String {
    sgdisk_info_field(path, index, "Partition unique GUID").to_lowercase()
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read image")
}

/// The GPT regions of an image (first 64 sectors and last 64 sectors) — what a table write may
/// touch. Comparing whole sparse images is slow and pointless.
pub fn gpt_regions(path: &Path) -> Vec<u8> {
    let bytes = read(path);
    let n = 64 * 512;
    let mut v = bytes[..n].to_vec();
    v.extend_from_slice(&bytes[bytes.len() - n..]);
    v
}

/// A loop device over an image with the given logical sector size; detached on drop.
pub struct LoopDevice {
    pub path: PathBuf,
}

impl LoopDevice {
    pub fn attach(image: &Path, sector_size: u64) -> LoopDevice {
        let out = Command::new("losetup")
            .args(["--sector-size", &sector_size.to_string(), "-f", "--show"])
            .arg(image)
            .output()
            .expect("run losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup failed (these tests need root and loop devices): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDevice {
            path: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}
