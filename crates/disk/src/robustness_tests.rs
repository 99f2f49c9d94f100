//! Hostile tables: headers whose CRC is valid but whose fields are garbage must give an error
//! or a consistent view, never a panic, an overflow, or a write outside the device.

use proptest::prelude::*;

use crate::{create, Disk, LayoutSpec, OpenMode};

fn image(dir: &std::path::Path) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    let spec = LayoutSpec {
        total_size: 48 << 20,
        efi_size: 1 << 20,
        usr_size: 8 << 20,
        oem_size: 1 << 20,
        ..LayoutSpec::default()
    };
    create(&img, &spec, false).unwrap();
    img
}

/// Overwrites 8 bytes of a header sector at `field` and re-seals its CRC, so the parser's CRC
/// check passes and only the geometry checks stand between garbage and arithmetic.
fn plant(img: &std::path::Path, header_lba: u64, field: usize, value: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut sector = vec![0u8; 512];
    f.read_exact_at(&mut sector, header_lba * 512).unwrap();
    sector[field..field + 8].copy_from_slice(&value.to_le_bytes());
    sector[16..20].fill(0);
    let crc = crc32fast::hash(&sector[..92]);
    sector[16..20].copy_from_slice(&crc.to_le_bytes());
    f.write_all_at(&sector, header_lba * 512).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn garbage_fields_with_valid_crc_never_panic(
        primary: bool,
        field in prop::sample::select(vec![24usize, 32, 40, 48, 72, 80]),
        value in prop_oneof![any::<u64>(), 0u64..200_000, Just(u64::MAX), Just(0u64)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let len = std::fs::metadata(&img).unwrap().len();
        let lba = if primary { 1 } else { len / 512 - 1 };
        plant(&img, lba, field, value);
        match Disk::open(&img, OpenMode::ReadWrite) {
            Ok(mut d) => {
                // Whatever copy survived is self-consistent and usable.
                for p in d.partitions() {
                    let (off, n) = p.byte_range(d.sector_size());
                    prop_assert!(off + n <= len);
                }
                d.stage(crate::USR_B_INDEX).unwrap();
                prop_assert!(d.health().is_clean());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        prop_assert_eq!(std::fs::metadata(&img).unwrap().len(), len, "the image never grows");
    }
}
