//! The GPT reader (what the boot chooser and the engine read at every boot): any disk image
//! opens or fails with an error, never a panic. One that opens read-write is repaired to a
//! clean table that reads back the same, and the boot choice on it never picks a slot the
//! attribute bits rule out.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use fastpatch_disk::{Disk, OpenMode};
use libfuzzer_sys::fuzz_target;

fn image_path() -> &'static PathBuf {
    static PATH: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &PATH
        .get_or_init(|| {
            // On tmpfs when there is one: the repair path fsyncs, and a disk's fsync would make
            // this target a hundred times slower.
            let dir = tempfile::tempdir_in("/dev/shm")
                .or_else(|_| tempfile::tempdir())
                .expect("temp dir");
            let path = dir.path().join("disk.img");
            (dir, path)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let path = image_path();
    std::fs::write(path, data).expect("write the image");
    for sector_size in [Some(512), Some(4096)] {
        if let Ok(disk) = Disk::open_with_sector_size(path, OpenMode::ReadOnly, sector_size) {
            let _ = (
                disk.partitions(),
                disk.peek_next(),
                disk.health().describe(),
            );
        }
    }
    let Ok(mut disk) = Disk::open_with_sector_size(path, OpenMode::ReadWrite, Some(512)) else {
        return;
    };
    let partitions = disk.partitions();
    let choice = disk.peek_next();
    let reopened = Disk::open_with_sector_size(path, OpenMode::ReadOnly, Some(512))
        .expect("a repaired table opens again");
    assert!(
        reopened.health().is_clean(),
        "repair left: {}",
        reopened.health().describe()
    );
    assert_eq!(
        reopened.partitions(),
        partitions,
        "the table changed across repair + reopen"
    );
    assert_eq!(
        reopened.peek_next(),
        choice,
        "the boot choice changed across repair + reopen"
    );
    if let Ok(Some((partition, _))) = disk.boot_next() {
        assert!(
            partition.is_usr(),
            "the chooser picked a non-USR partition: {partition:?}"
        );
    }
});
