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
    let ss = spec.sector_size;
    if ss != 512 && ss != 4096 {
        return Err(invalid(format!(
            "sector size must be 512 or 4096 (got {ss})"
        )));
    }
    if spec.total_size < spec.minimum_total() {
        return Err(invalid(format!(
            "{} bytes is too small for this layout; it needs at least {} bytes ({} MiB)",
            spec.total_size,
            spec.minimum_total(),
            spec.minimum_total().div_ceil(MIB)
        )));
    }
    for (name, size) in [
        ("EFI", spec.efi_size),
        ("BIOS-BOOT", spec.bios_boot_size),
        ("USR", spec.usr_size),
        ("OEM", spec.oem_size),
    ] {
        if size == 0 || !size.is_multiple_of(ss) {
            return Err(invalid(format!(
                "{name} size must be a positive multiple of {ss} bytes"
            )));
        }
    }
    let total = spec.total_size / ss * ss;
    let sectors = total / ss;
    let last_lba = sectors - 1;
    let entries_bytes = u64::from(ENTRY_COUNT) * u64::from(gpt::ENTRY_MIN_SIZE);
    let entries_sectors = entries_bytes.div_ceil(ss);
    let first_usable = 2 + entries_sectors;
    let last_usable = last_lba - entries_sectors - 1;
    let align = MIB / ss;

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

    // Lay the partitions out one after another on 1 MiB boundaries.
    let plan: [PlannedPartition; 6] = [
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
    ];
    let mut entries = vec![0u8; entries_bytes as usize];
    let mut next = align; // first partition at 1 MiB
    for (index, name, type_guid, unique, size, attrs) in plan {
        let first = next.div_ceil(align) * align;
        let last = if size == 0 {
            (last_usable + 1) / align * align - 1
        } else {
            first + size / ss - 1
        };
        if last > last_usable || last < first {
            return Err(invalid(format!("partition {name} does not fit")));
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

    let disk_guid = spec.disk_guid.unwrap_or_else(Uuid::new_v4);
    let mut primary = Header::new(
        ss,
        1,
        last_lba,
        first_usable,
        last_usable,
        disk_guid,
        2,
        ENTRY_COUNT,
    );
    primary.set_entries_crc(&entries);
    let mut backup = primary.clone();
    backup.set_location(last_lba, 1, last_lba - entries_sectors);

    use std::os::unix::fs::FileExt;
    let io = |op: &'static str| {
        move |source| DiskError::Io {
            path: path.to_path_buf(),
            op,
            error: source,
        }
    };
    f.write_all_at(&protective_mbr(sectors, ss), 0)
        .map_err(io("write"))?;
    f.write_all_at(&entries, 2 * ss).map_err(io("write"))?;
    f.write_all_at(primary.as_bytes(), ss)
        .map_err(io("write"))?;
    f.write_all_at(&entries, backup.entries_lba() * ss)
        .map_err(io("write"))?;
    f.write_all_at(backup.as_bytes(), last_lba * ss)
        .map_err(io("write"))?;
    f.sync_all().map_err(io("sync"))?;
    drop(f);
    Disk::open_with_sector_size(path, OpenMode::ReadWrite, Some(ss))
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
