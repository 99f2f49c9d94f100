//! GptBootControl on real images made by the disk layer.

use fastpatch_boot_control::{BootControl, BootControlError, GptBootControl, Slot};
use fastpatch_disk::{create, Disk, LayoutSpec, OpenMode};

fn image(dir: &std::path::Path) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    let spec = LayoutSpec {
        total_size: 64 << 20,
        efi_size: 2 << 20,
        usr_size: 8 << 20,
        oem_size: 2 << 20,
        ..LayoutSpec::default()
    };
    create(&img, &spec, false).unwrap();
    img
}

/// What the boot chooser does at power-on.
fn boot(img: &std::path::Path) -> Slot {
    let mut d = Disk::open(img, OpenMode::ReadWrite).unwrap();
    let (p, _) = d.boot_next().unwrap().unwrap();
    Slot::from_partition_index(p.index).unwrap()
}

#[test]
fn update_cycle_with_the_invariants() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let mut bc = GptBootControl::from_partuuid(&img, fastpatch_disk::FLATCAR_USR_A_GUID).unwrap();
    assert_eq!(bc.booted(), Slot::A);

    // The booted slot is never a target.
    assert!(matches!(
        bc.check_writable(Slot::A),
        Err(BootControlError::BootedSlot(Slot::A))
    ));
    assert!(matches!(
        bc.stage(Slot::A),
        Err(BootControlError::BootedSlot(Slot::A))
    ));
    let b = bc.check_writable(Slot::B).unwrap();
    assert_eq!(
        (b.byte_offset, b.byte_len),
        Disk::open(&img, OpenMode::ReadOnly)
            .unwrap()
            .partition_byte_range(4)
            .unwrap()
    );

    bc.stage(Slot::B).unwrap();
    assert_eq!(bc.next_boot().unwrap(), Some(Slot::B));
    assert_eq!(boot(&img), Slot::B);

    // Running B, not yet marked good: A is the fallback and must not be written.
    let mut on_b = GptBootControl::new(&img, Slot::B);
    assert!(matches!(
        on_b.check_writable(Slot::A),
        Err(BootControlError::BootNotMarkedGood(Slot::B))
    ));
    assert!(matches!(
        on_b.stage(Slot::A),
        Err(BootControlError::BootNotMarkedGood(Slot::B))
    ));
    on_b.mark_booted_good().unwrap();
    on_b.check_writable(Slot::A).unwrap();
    assert_eq!(on_b.next_boot().unwrap(), Some(Slot::B));

    // Manual rollback to A (known good), and back.
    assert_eq!(on_b.rollback().unwrap().next, Slot::A);
    assert_eq!(boot(&img), Slot::A);
}

#[test]
fn rollback_refuses_a_slot_that_never_booted_good() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let before = std::fs::read(&img).unwrap();
    let mut bc = GptBootControl::new(&img, Slot::A);
    let err = bc.rollback().unwrap_err();
    assert!(
        err.to_string()
            .contains("USR-B has never booted successfully"),
        "{err}"
    );
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a refused rollback writes nothing"
    );
}

#[test]
fn unknown_partuuid_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let err = GptBootControl::from_partuuid(&img, uuid::Uuid::nil())
        .err()
        .unwrap();
    assert!(err.to_string().contains("no USR slot"), "{err}");
}
