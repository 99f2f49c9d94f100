//! The helpers both disk test binaries use (`it` and the fail-point `power_cut`): small
//! images and sgdisk as the independent cross-check. What only `it` needs is in
//! `it/support.rs`.

use std::path::Path;
use std::process::Command;

use fastpatch_disk::{Disk, LayoutSpec, OpenMode};

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
pub fn sgdisk_info_field(path: &Path, index: u32, field: &str) -> String {
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
