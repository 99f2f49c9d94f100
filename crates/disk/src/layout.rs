//! `fastpatch disk create`: a Flatcar-like test disk, the disk every later test and the demo use.
//!
//! Partition numbers follow Flatcar: 1 EFI-SYSTEM, 2 BIOS-BOOT, 3 USR-A, 4 USR-B, 6 OEM,
//! 9 ROOT (filling the rest). USR-A starts out good at priority 1; USR-B is empty.

use std::fs::OpenOptions;
use std::path::Path;

use uuid::Uuid;

use crate::attrs::SlotAttrs;
use crate::device::OpenMode;
use crate::disk::Disk;
use crate::error::{DiskError, Result};
use crate::gpt::{self, Header, RawEntry};
use crate::types::*;

const MIB: u64 = 1 << 20;
const ENTRY_COUNT: u32 = 128;

/// (number, name, type, fixed unique GUID, size in bytes (0 = the rest), attributes)
type PlannedPartition = (u32, &'static str, Uuid, Option<Uuid>, u64, SlotAttrs);

/// Sizes of a new disk, in bytes.
#[derive(Debug, Clone)]
pub struct LayoutSpec {
    pub total_size: u64,
    pub sector_size: u64,
    pub efi_size: u64,
    pub bios_boot_size: u64,
    pub usr_size: u64,
    pub oem_size: u64,
    /// Smallest ROOT partition accepted.
    pub min_root_size: u64,
    pub disk_guid: Option<Uuid>,
}

impl Default for LayoutSpec {
    fn default() -> Self {
        LayoutSpec {
            total_size: 3 * 1024 * MIB,
            sector_size: 512,
            efi_size: 128 * MIB,
            bios_boot_size: 2 * MIB,
            usr_size: 1024 * MIB,
            oem_size: 128 * MIB,
            min_root_size: 16 * MIB,
            disk_guid: None,
        }
    }
}

impl LayoutSpec {
    /// Smallest total size that fits the fixed partitions, the tables and alignment.
    pub fn minimum_total(&self) -> u64 {
        let parts = self.efi_size
            + self.bios_boot_size
            + 2 * self.usr_size
            + self.oem_size
            + self.min_root_size;
        // 1 MiB in front, 1 MiB for the backup table and alignment, 1 MiB slack per partition.
        parts + 2 * MIB + 6 * MIB
    }
}

/// Creates `path` (which must not exist unless `overwrite`) as a sparse image with the layout.
pub fn create(path: &Path, spec: &LayoutSpec, overwrite: bool) -> Result<Disk> {
    let invalid = |message: String| DiskError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    spec.check().map_err(invalid)?;
    let g = Geometry::of(spec);
    let entries = lay_out(&partition_plan(spec), &g).map_err(invalid)?;
    let disk_guid = spec.disk_guid.unwrap_or_else(Uuid::new_v4);
    let f = open_image(path, g.total, overwrite)?;
    write_tables(&f, &g, &entries, disk_guid).map_err(|(op, source)| DiskError::Io {
        path: path.to_path_buf(),
        op,
        error: source,
    })?;
    drop(f);
    Disk::open_with_sector_size(path, OpenMode::ReadWrite, Some(g.ss))
}

impl LayoutSpec {
    /// The sector size, the total size and every partition size make sense together.
    fn check(&self) -> std::result::Result<(), String> {
        let ss = self.sector_size;
        if ss != 512 && ss != 4096 {
            return Err(format!("sector size must be 512 or 4096 (got {ss})"));
        }
        if self.total_size < self.minimum_total() {
            return Err(format!(
                "{} bytes is too small for this layout; it needs at least {} bytes ({} MiB)",
                self.total_size,
                self.minimum_total(),
                self.minimum_total().div_ceil(MIB)
            ));
        }
        for (name, size) in [
            ("EFI", self.efi_size),
            ("BIOS-BOOT", self.bios_boot_size),
            ("USR", self.usr_size),
            ("OEM", self.oem_size),
        ] {
            if size == 0 || !size.is_multiple_of(ss) {
                return Err(format!(
                    "{name} size must be a positive multiple of {ss} bytes"
                ));
            }
        }
        Ok(())
    }
}

/// Where the tables and the usable area are, in sectors.
struct Geometry {
    ss: u64,
    /// The image size, whole sectors.
    total: u64,
    sectors: u64,
    last_lba: u64,
    entries_bytes: u64,
    entries_sectors: u64,
    first_usable: u64,
    last_usable: u64,
    /// 1 MiB in sectors: partitions start on these boundaries.
    align: u64,
}

impl Geometry {
    fn of(spec: &LayoutSpec) -> Geometry {
        let ss = spec.sector_size;
        let total = spec.total_size / ss * ss;
        let sectors = total / ss;
        let last_lba = sectors - 1;
        let entries_bytes = u64::from(ENTRY_COUNT) * u64::from(gpt::ENTRY_MIN_SIZE);
        let entries_sectors = entries_bytes.div_ceil(ss);
        Geometry {
            ss,
            total,
            sectors,
            last_lba,
            entries_bytes,
            entries_sectors,
            first_usable: 2 + entries_sectors,
            last_usable: last_lba - entries_sectors - 1,
            align: MIB / ss,
        }
    }
}

/// Flatcar's partitions, in table order: (index, label, type, fixed unique GUID, size (0: the
/// rest of the disk), attributes). USR-A starts good and first.
fn partition_plan(spec: &LayoutSpec) -> [PlannedPartition; 6] {
    [
        (
            1,
            "EFI-SYSTEM",
            EFI_SYSTEM_TYPE_GUID,
            None,
            spec.efi_size,
            SlotAttrs::default(),
        ),
        (
            2,
            "BIOS-BOOT",
            BIOS_BOOT_TYPE_GUID,
            None,
            spec.bios_boot_size,
            SlotAttrs::default(),
        ),
        (
            3,
            "USR-A",
            USR_TYPE_GUID,
            Some(FLATCAR_USR_A_GUID),
            spec.usr_size,
            SlotAttrs {
                priority: 1,
                tries: 0,
                successful: true,
            },
        ),
        (
            4,
            "USR-B",
            USR_TYPE_GUID,
            Some(FLATCAR_USR_B_GUID),
            spec.usr_size,
            SlotAttrs::default(),
        ),
        (
            6,
            "OEM",
            OEM_TYPE_GUID,
            None,
            spec.oem_size,
            SlotAttrs::default(),
        ),
        (
            9,
            "ROOT",
            ROOT_RESIZE_TYPE_GUID,
            None,
            0,
            SlotAttrs::default(),
        ),
    ]
}

/// The partition entries array: the partitions one after another on 1 MiB boundaries, the
/// last one (size 0) taking the rest.
fn lay_out(plan: &[PlannedPartition], g: &Geometry) -> std::result::Result<Vec<u8>, String> {
    let mut entries = vec![0u8; g.entries_bytes as usize];
    let mut next = g.align; // first partition at 1 MiB
    for &(index, name, type_guid, unique, size, attrs) in plan {
        let first = next.div_ceil(g.align) * g.align;
        let last = if size == 0 {
            (g.last_usable + 1) / g.align * g.align - 1
        } else {
            first + size / g.ss - 1
        };
        if last > g.last_usable || last < first {
            return Err(format!("partition {name} does not fit"));
        }
        let entry = RawEntry {
            type_guid,
            unique_guid: unique.unwrap_or_else(Uuid::new_v4),
            first_lba: first,
            last_lba: last,
            attributes: attrs.apply_to(0),
            name: name.to_string(),
        };
        gpt::write_entry(&mut entries, gpt::ENTRY_MIN_SIZE, index - 1, &entry);
        next = last + 1;
    }
    Ok(entries)
}

/// The image file at its full (sparse) size; an existing file only with `overwrite`.
fn open_image(path: &Path, total: u64, overwrite: bool) -> Result<std::fs::File> {
    let mut file = OpenOptions::new();
    file.write(true);
    if overwrite {
        file.create(true).truncate(true);
    } else {
        file.create_new(true);
    }
    let f = file.open(path).map_err(|source| DiskError::Open {
        path: path.to_path_buf(),
        error: source,
    })?;
    f.set_len(total).map_err(|source| DiskError::Io {
        path: path.to_path_buf(),
        op: "resize",
        error: source,
    })?;
    Ok(f)
}

/// The protective MBR, both tables and their entries, then a sync.
fn write_tables(
    f: &std::fs::File,
    g: &Geometry,
    entries: &[u8],
    disk_guid: Uuid,
) -> std::result::Result<(), (&'static str, std::io::Error)> {
    use std::os::unix::fs::FileExt;
    let ss = g.ss;
    let mut primary = Header::new(
        ss,
        1,
        g.last_lba,
        g.first_usable,
        g.last_usable,
        disk_guid,
        2,
        ENTRY_COUNT,
    );
    primary.set_entries_crc(entries);
    let mut backup = primary.clone();
    backup.set_location(g.last_lba, 1, g.last_lba - g.entries_sectors);
    let write = |e| ("write", e);
    f.write_all_at(&protective_mbr(g.sectors, ss), 0)
        .map_err(write)?;
    f.write_all_at(entries, 2 * ss).map_err(write)?;
    f.write_all_at(primary.as_bytes(), ss).map_err(write)?;
    f.write_all_at(entries, backup.entries_lba() * ss)
        .map_err(write)?;
    f.write_all_at(backup.as_bytes(), g.last_lba * ss)
        .map_err(write)?;
    f.sync_all().map_err(|e| ("sync", e))
}

/// LBA 0: one partition of type 0xEE covering the disk, so MBR-only tools keep their hands off.
fn protective_mbr(sectors: u64, ss: u64) -> Vec<u8> {
    let mut mbr = vec![0u8; ss as usize];
    let rec = &mut mbr[446..462];
    rec[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    rec[4] = 0xEE;
    rec[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    rec[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    rec[12..16].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> LayoutSpec {
        LayoutSpec {
            total_size: 64 * MIB,
            efi_size: 2 * MIB,
            bios_boot_size: 2 * MIB,
            usr_size: 8 * MIB,
            oem_size: 2 * MIB,
            ..LayoutSpec::default()
        }
    }

    #[test]
    fn a_spec_that_cannot_be_laid_out_is_refused_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                LayoutSpec {
                    sector_size: 1024,
                    ..small()
                },
                "sector size must be 512 or 4096 (got 1024)",
            ),
            (
                LayoutSpec {
                    total_size: 20 * MIB,
                    ..small()
                },
                "20971520 bytes is too small for this layout; it needs at least",
            ),
            (
                LayoutSpec {
                    oem_size: 1000,
                    ..small()
                },
                "OEM size must be a positive multiple of 512 bytes",
            ),
        ];
        for (i, (spec, want)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.img"));
            let Err(err) = create(&path, &spec, false) else {
                panic!("case {i} was accepted");
            };
            let err = err.to_string();
            assert!(err.contains(want), "{err}");
            assert!(!path.exists(), "{err}: nothing is created");
        }
        let path = dir.path().join("ok.img");
        let disk = create(&path, &small(), false).unwrap();
        assert_eq!(disk.partitions().len(), 6);
    }
}
