//! A power cut at every fail-point of a table write leaves a disk that boots either the old or
//! the new choice: at least one copy valid, sgdisk loading the same table we do, and a clean
//! `sgdisk -v` once the copies are resynchronised (what every read-write open does).
#![cfg(feature = "failpoints")]

mod support;

use std::path::Path;

use fastpatch_disk::{Disk, DiskError, OpenMode, SlotAttrs, CUT_POINTS, USR_A_INDEX, USR_B_INDEX};
use support::*;

type Op = fn(&mut Disk) -> Result<(), DiskError>;
/// (name, how to prepare the disk, the operation that gets cut)
type Case = (&'static str, fn(&Path), Op);

/// The slot attributes of USR-A and USR-B, as we read them.
fn usr_state(img: &Path) -> (SlotAttrs, SlotAttrs) {
    let d = Disk::open(img, OpenMode::ReadOnly).expect("a cut must leave a readable GPT");
    (
        d.partition(USR_A_INDEX).unwrap().attrs,
        d.partition(USR_B_INDEX).unwrap().attrs,
    )
}

/// The same, as sgdisk reads them.
fn sgdisk_state(img: &Path) -> (SlotAttrs, SlotAttrs) {
    (
        SlotAttrs::from_raw(sgdisk_attributes(img, 3)),
        SlotAttrs::from_raw(sgdisk_attributes(img, 4)),
    )
}

fn corrupt_primary_header(img: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(b"XXXX", 512 + 24).unwrap();
}

#[test]
fn every_cut_leaves_the_old_or_the_new_choice() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let ops: [Case; 3] = [
        ("stage B", |_| {}, |d| d.stage(USR_B_INDEX)),
        (
            "next decrements",
            |img| open_rw(img).stage(USR_B_INDEX).unwrap(),
            |d| d.boot_next().map(|_| ()),
        ),
        (
            "mark B good",
            |img| {
                let mut d = open_rw(img);
                d.stage(USR_B_INDEX).unwrap();
                d.boot_next().unwrap();
            },
            |d| d.mark_good(USR_B_INDEX),
        ),
    ];
    let mut checked = 0;
    for (op_name, prepare, op) in ops {
        for primary_broken in [false, true] {
            // The table before and after the operation, without any cut.
            let reference = dir.path().join("reference.img");
            let _ = std::fs::remove_file(&reference);
            fastpatch_disk::create(&reference, &small_spec(512), false).unwrap();
            prepare(&reference);
            let old = usr_state(&reference);
            op(&mut open_rw(&reference)).unwrap();
            let new = usr_state(&reference);
            assert_ne!(old, new, "{op_name} must change something");

            for (k, point) in CUT_POINTS.iter().enumerate() {
                let what =
                    format!("{op_name}, cut at {point}, primary broken before: {primary_broken}");
                let img = dir.path().join(format!("cut-{k}.img"));
                let _ = std::fs::remove_file(&img);
                fastpatch_disk::create(&img, &small_spec(512), false).unwrap();
                prepare(&img);
                let mut disk = open_rw(&img);
                if primary_broken {
                    drop(disk);
                    corrupt_primary_header(&img);
                    // Read-only open keeps the damage, so the write starts from a broken primary.
                    disk = Disk::open(&img, OpenMode::ReadOnly).unwrap();
                    assert!(!disk.health().is_clean());
                    drop(disk);
                    disk = open_without_repair(&img);
                }
                fail::cfg(*point, "return").unwrap();
                let result = op(&mut disk);
                fail::remove(*point);
                drop(disk);
                assert!(
                    matches!(result, Err(DiskError::InjectedCut { .. })),
                    "{what}: {result:?}"
                );

                let after = usr_state(&img);
                assert!(
                    after == old || after == new,
                    "{what}: neither old nor new: {after:?}"
                );
                // Where only the first copy was touched, readers still see the old table;
                // once the second copy is being written, the first one (new) is what they see.
                let expect_new = point.starts_with("gpt-second")
                    || (primary_broken && *point != "gpt-first-entries-written");
                assert_eq!(after, if expect_new { new } else { old }, "{what}");
                // sgdisk, an independent reader, loads the same table.
                assert_eq!(sgdisk_state(&img), after, "{what}: sgdisk disagrees");
                // The next read-write open (the boot chooser, cgpt) resynchronises the copies.
                drop(open_rw(&img));
                assert_eq!(usr_state(&img), after, "{what}: repair changed the choice");
                assert_sgdisk_clean(&img);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3 * 2 * CUT_POINTS.len());
    scenario.teardown();
}

/// Opens read-write while keeping a damaged primary in place (a plain read-write open would
/// repair it first, and this test wants the write to start from the damaged state).
fn open_without_repair(img: &Path) -> Disk {
    fail::cfg("gpt-skip-open-repair", "return").unwrap();
    let d = Disk::open(img, OpenMode::ReadWrite).unwrap();
    fail::remove("gpt-skip-open-repair");
    assert!(!d.health().is_clean(), "the primary must still be broken");
    d
}
