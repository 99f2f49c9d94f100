//! sgdisk (an independent GPT implementation) must agree with every table we write.

use crate::support;

use fastpatch_disk::{create, Disk, OpenMode, SlotAttrs, USR_A_INDEX, USR_B_INDEX};
use support::*;

#[test]
fn created_image_is_valid_and_usr_a_is_good() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_image(dir.path(), "disk.img");
    assert_sgdisk_clean(&img);
    // priority 1 (bit 48) + successful (bit 56)
    assert_eq!(sgdisk_attributes(&img, USR_A_INDEX), 0x0101_0000_0000_0000);
    assert_eq!(sgdisk_attributes(&img, USR_B_INDEX), 0);
    assert_eq!(
        sgdisk_unique_guid(&img, 3),
        "7130c94a-213a-4e5a-8e26-6cce9662f132"
    );
    assert_eq!(
        sgdisk_unique_guid(&img, 4),
        "e03dd35c-7c2d-4a47-b3fe-27f15780a57c"
    );
    let disk = open_rw(&img);
    let names: Vec<_> = disk
        .partitions()
        .iter()
        .map(|p| (p.index, p.name.clone()))
        .collect();
    let want = [
        (1, "EFI-SYSTEM"),
        (2, "BIOS-BOOT"),
        (3, "USR-A"),
        (4, "USR-B"),
        (6, "OEM"),
        (9, "ROOT"),
    ];
    assert_eq!(names, want.map(|(i, n)| (i, n.to_string())));
}

#[test]
fn every_change_is_seen_by_sgdisk() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_image(dir.path(), "disk.img");
    let mut disk = open_rw(&img);

    disk.stage(USR_B_INDEX).unwrap();
    assert_sgdisk_clean(&img);
    assert_eq!(
        SlotAttrs::from_raw(sgdisk_attributes(&img, 4)),
        SlotAttrs {
            priority: 2,
            tries: 1,
            successful: false
        }
    );
    assert_eq!(SlotAttrs::from_raw(sgdisk_attributes(&img, 3)).priority, 1);

    disk.boot_next().unwrap();
    assert_sgdisk_clean(&img);
    assert_eq!(SlotAttrs::from_raw(sgdisk_attributes(&img, 4)).tries, 0);

    disk.mark_good(USR_B_INDEX).unwrap();
    assert_sgdisk_clean(&img);
    assert_eq!(
        SlotAttrs::from_raw(sgdisk_attributes(&img, 4)),
        SlotAttrs {
            priority: 2,
            tries: 0,
            successful: true
        }
    );

    disk.set_attrs(
        USR_A_INDEX,
        SlotAttrs {
            priority: 15,
            tries: 15,
            successful: false,
        },
    )
    .unwrap();
    assert_sgdisk_clean(&img);
    assert_eq!(sgdisk_attributes(&img, 3), 0x00FF_0000_0000_0000);

    disk.prioritize(USR_B_INDEX, Some(7)).unwrap();
    assert_sgdisk_clean(&img);
    assert_eq!(SlotAttrs::from_raw(sgdisk_attributes(&img, 4)).priority, 7);
    assert_eq!(SlotAttrs::from_raw(sgdisk_attributes(&img, 3)).priority, 6);
}

#[test]
fn foreign_attribute_bits_survive_our_writes() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_image(dir.path(), "disk.img");
    // Bit 0 (platform required) and bit 60 (read-only) belong to others.
    for bit in ["0", "60"] {
        let st = std::process::Command::new("sgdisk")
            .args(["-A", &format!("4:set:{bit}")])
            .arg(&img)
            .output()
            .unwrap();
        assert!(st.status.success());
    }
    let mut disk = open_rw(&img);
    disk.stage(USR_B_INDEX).unwrap();
    disk.mark_good(USR_B_INDEX).unwrap();
    let raw = sgdisk_attributes(&img, 4);
    assert_eq!(raw & 1, 1);
    assert_eq!(raw >> 60 & 1, 1);
    assert_eq!(
        SlotAttrs::from_raw(raw),
        SlotAttrs {
            priority: 2,
            tries: 0,
            successful: true
        }
    );
    assert_sgdisk_clean(&img);
}

#[test]
fn sector_size_4096_on_a_loop_device() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk4k.img");
    create(&img, &small_spec(4096), false).unwrap();
    let dev = LoopDevice::attach(&img, 4096);
    assert_sgdisk_clean(&dev.path);
    let mut disk = Disk::open(&dev.path, OpenMode::ReadWrite).unwrap();
    assert_eq!(disk.sector_size(), 4096);
    disk.stage(USR_B_INDEX).unwrap();
    drop(disk);
    assert_sgdisk_clean(&dev.path);
    assert_eq!(
        SlotAttrs::from_raw(sgdisk_attributes(&dev.path, 4)),
        SlotAttrs {
            priority: 2,
            tries: 1,
            successful: false
        }
    );
    // The image file alone is recognised as 4096-byte too (signature probe).
    let disk = Disk::open(&img, OpenMode::ReadOnly).unwrap();
    assert_eq!(disk.sector_size(), 4096);
    assert_eq!(disk.partition(4).unwrap().attrs.tries, 1);
}
