//! The shared helpers (`tests/support`, which the fail-point binary uses too) and the ones
//! only these tests need.

use std::path::{Path, PathBuf};
use std::process::Command;

use fastpatch_disk::create;

pub use crate::shared::*;

pub fn new_image(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    create(&path, &small_spec(512), false).expect("create test image");
    path
}

/// The unique GUID of partition `index` as sgdisk reads it (lower case).
pub fn sgdisk_unique_guid(path: &Path, index: u32) -> String {
    sgdisk_info_field(path, index, "Partition unique GUID").to_lowercase()
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read image")
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
