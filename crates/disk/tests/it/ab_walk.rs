//! The A→B→rollback walk of the acceptance, on a real image.

use crate::support;

use fastpatch_disk::{Disk, OpenMode, USR_A_INDEX, USR_B_INDEX};
use support::*;

fn next(img: &std::path::Path) -> u32 {
    let mut disk = Disk::open(img, OpenMode::ReadWrite).unwrap();
    let (p, _) = disk.boot_next().unwrap().expect("a bootable slot");
    p.index
}

#[test]
fn stage_fail_rollback_then_stage_good_stays() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_image(dir.path(), "disk.img");
    assert_eq!(next(&img), USR_A_INDEX, "fresh disk boots A");

    // Stage B; the first boot tries B and spends its only try.
    open_rw(&img).stage(USR_B_INDEX).unwrap();
    assert_eq!(next(&img), USR_B_INDEX);
    let b = Disk::open(&img, OpenMode::ReadOnly)
        .unwrap()
        .partition(USR_B_INDEX)
        .unwrap();
    assert_eq!((b.attrs.tries, b.attrs.successful), (0, false));
    // B was never marked good: the next boot falls back to A, and keeps doing so.
    assert_eq!(next(&img), USR_A_INDEX);
    assert_eq!(next(&img), USR_A_INDEX);
    assert_sgdisk_clean(&img);

    // Stage B again, and this time the boot is marked good.
    open_rw(&img).stage(USR_B_INDEX).unwrap();
    assert_eq!(next(&img), USR_B_INDEX);
    open_rw(&img).mark_good(USR_B_INDEX).unwrap();
    for _ in 0..3 {
        assert_eq!(next(&img), USR_B_INDEX);
    }
    // A stays as a bootable fallback below B.
    let disk = Disk::open(&img, OpenMode::ReadOnly).unwrap();
    let a = disk.partition(USR_A_INDEX).unwrap().attrs;
    let b = disk.partition(USR_B_INDEX).unwrap().attrs;
    assert!(
        a.bootable() && b.bootable() && b.priority > a.priority,
        "A={a} B={b}"
    );
    assert_sgdisk_clean(&img);
}
