//! A damaged copy of the table is detected, described, and rebuilt from the sound one.

use crate::support;

use std::os::unix::fs::FileExt;

use fastpatch_disk::{CopyHealth, Disk, OpenMode, USR_B_INDEX};
use support::*;

fn flip(img: &std::path::Path, offset: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5A;
    f.write_all_at(&b, offset).unwrap();
}

fn last_lba(img: &std::path::Path) -> u64 {
    std::fs::metadata(img).unwrap().len() / 512 - 1
}

#[test]
fn each_damaged_region_is_repaired_from_the_other_copy() {
    let dir = tempfile::tempdir().unwrap();
    // (what, byte offset to damage, which copy breaks)
    type Offset = Box<dyn Fn(&std::path::Path) -> u64>;
    let cases: Vec<(&str, Offset, bool)> = vec![
        ("primary header", Box::new(|_| 512 + 40), true),
        (
            "primary entries",
            Box::new(|_| 2 * 512 + 3 * 128 + 48),
            true,
        ),
        ("backup header", Box::new(|p| last_lba(p) * 512 + 40), false),
        (
            "backup entries",
            Box::new(|p| (last_lba(p) - 32) * 512 + 3 * 128 + 48),
            false,
        ),
    ];
    for (what, offset, primary_breaks) in cases {
        let img = dir.path().join(format!("{}.img", what.replace(' ', "-")));
        fastpatch_disk::create(&img, &small_spec(512), false).unwrap();
        open_rw(&img).stage(USR_B_INDEX).unwrap();
        let before = Disk::open(&img, OpenMode::ReadOnly).unwrap().partitions();
        flip(&img, offset(&img));

        let ro = Disk::open(&img, OpenMode::ReadOnly).unwrap();
        let (broken, sound) = if primary_breaks {
            (&ro.health().primary, &ro.health().backup)
        } else {
            (&ro.health().backup, &ro.health().primary)
        };
        assert!(
            matches!(broken, CopyHealth::Broken(_)),
            "{what}: {:?}",
            ro.health()
        );
        assert_eq!(*sound, CopyHealth::Valid, "{what}");
        let message = ro.health().describe();
        assert!(
            message.contains(if primary_breaks {
                "primary GPT is corrupt"
            } else {
                "backup GPT is corrupt"
            }),
            "{what}: {message}"
        );
        // The readable view is the sound copy's, identical to before the damage.
        assert_eq!(ro.partitions(), before, "{what}");
        drop(ro);

        let mut rw = Disk::open(&img, OpenMode::ReadWrite).unwrap();
        assert!(
            rw.health().is_clean(),
            "{what}: opened read-write, it is repaired"
        );
        assert_eq!(rw.repair().unwrap(), None);
        assert_eq!(rw.partitions(), before, "{what}");
        assert_sgdisk_clean(&img);
    }
}

#[test]
fn both_copies_damaged_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_image(dir.path(), "disk.img");
    flip(&img, 512 + 40);
    flip(&img, last_lba(&img) * 512 + 40);
    let before = read(&img);
    let err = Disk::open(&img, OpenMode::ReadWrite)
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("has no valid GPT") && msg.contains("primary: header CRC mismatch"),
        "{msg}"
    );
    assert_eq!(read(&img), before, "nothing written");
}
