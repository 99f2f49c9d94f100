//! An open GPT disk: reading and validating both copies of the table, the partition view, and
//! every change of slot attributes. All writes go through [`crate::write::commit`].

use std::path::Path;

use uuid::Uuid;

use crate::attrs::SlotAttrs;
use crate::device::{Device, OpenMode};
use crate::error::{DiskError, Result};
use crate::gpt::{self, Header, HeaderProblem};
use crate::prio::{self, BootChoice, Candidate};
use crate::types::USR_TYPE_GUID;
use crate::write;

/// The state of one copy (primary or backup) of the partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyHealth {
    Valid,
    /// Valid on its own, but it disagrees with the primary (an interrupted write).
    Stale,
    Broken(HeaderProblem),
}

/// Which copies of the table are sound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub primary: CopyHealth,
    pub backup: CopyHealth,
}

impl Health {
    pub fn is_clean(&self) -> bool {
        self.primary == CopyHealth::Valid && self.backup == CopyHealth::Valid
    }

    /// One line for a person: what is wrong and what repair does about it.
    pub fn describe(&self) -> String {
        match (&self.primary, &self.backup) {
            (CopyHealth::Valid, CopyHealth::Valid) => "primary and backup GPT are valid".into(),
            (CopyHealth::Valid, CopyHealth::Stale) => {
                "backup GPT differs from the primary (interrupted write); the primary is used and the backup is rewritten from it".into()
            }
            (CopyHealth::Valid, CopyHealth::Broken(p)) => {
                format!("backup GPT is corrupt ({p}); it is rebuilt from the primary")
            }
            (CopyHealth::Broken(p), _) => {
                format!("primary GPT is corrupt ({p}); it is rebuilt from the backup")
            }
            (CopyHealth::Stale, _) => "primary GPT is stale".into(),
        }
    }
}

/// A partition as read from the authoritative copy of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number.
    pub index: u32,
    pub type_guid: Uuid,
    pub unique_guid: Uuid,
    pub name: String,
    pub first_lba: u64,
    pub last_lba: u64,
    /// The whole 64-bit attribute word.
    pub raw_attributes: u64,
    pub attrs: SlotAttrs,
}

impl Partition {
    pub fn is_usr(&self) -> bool {
        self.type_guid == USR_TYPE_GUID
    }

    /// Byte offset and length of the partition on the disk.
    pub fn byte_range(&self, sector_size: u64) -> (u64, u64) {
        (
            self.first_lba * sector_size,
            (self.last_lba - self.first_lba + 1) * sector_size,
        )
    }
}

/// An open disk with a GPT.
pub struct Disk {
    pub(crate) dev: Device,
    pub(crate) sector_size: u64,
    /// Header of the primary copy (valid, or rebuilt from the backup).
    pub(crate) primary: Header,
    /// Header of the backup copy (valid, or rebuilt from the primary).
    pub(crate) backup: Header,
    /// The authoritative entry array.
    pub(crate) entries: Vec<u8>,
    health: Health,
}

/// Reads one copy: header sector at `lba`, then its entry array.
fn read_copy(dev: &Device, ss: u64, lba: u64) -> Result<Result<(Header, Vec<u8>), HeaderProblem>> {
    let sectors = dev.len / ss;
    if lba >= sectors {
        return Ok(Err(HeaderProblem::NoSignature));
    }
    let sector = dev.read_at(lba * ss, ss as usize)?;
    let header = match Header::parse(&sector, lba, ss) {
        Ok(h) => h,
        Err(p) => return Ok(Err(p)),
    };
    if let Err(p) = header.check_geometry(ss, sectors) {
        return Ok(Err(p));
    }
    // check_geometry bounds entries_lba by the device size, so this cannot overflow.
    let entries = dev.read_at(header.entries_lba() * ss, header.entries_bytes() as usize)?;
    if let Err(p) = header
        .check_entries(&entries)
        .and_then(|()| header.check_entry_bounds(&entries))
    {
        return Ok(Err(p));
    }
    Ok(Ok((header, entries)))
}

impl Disk {
    /// Opens a disk image or block device and reads its GPT, detecting the sector size.
    ///
    /// In [`OpenMode::ReadWrite`], a damaged or stale copy of the table is repaired from the
    /// sound one right away (logged as a warning). In read-only mode nothing is written; see
    /// [`Disk::health`].
    pub fn open(path: &Path, mode: OpenMode) -> Result<Disk> {
        Self::open_with_sector_size(path, mode, None)
    }

    /// Like [`Disk::open`] with the logical sector size given instead of detected.
    pub fn open_with_sector_size(
        path: &Path,
        mode: OpenMode,
        sector_size: Option<u64>,
    ) -> Result<Disk> {
        let dev = Device::open(path, mode)?;
        let ss = match sector_size.or_else(|| dev.block_sector_size()) {
            Some(ss) => ss,
            None => detect_sector_size(&dev)?,
        };
        if dev.len < ss * 3 {
            return Err(DiskError::TooSmall {
                path: path.to_path_buf(),
                len: dev.len,
            });
        }
        let mut disk = Self::read_table(dev, ss)?;
        // Tests start writes from a damaged table with this fail-point armed.
        #[cfg(feature = "failpoints")]
        let skip_repair = fail::eval("gpt-skip-open-repair", |_| ()).is_some();
        #[cfg(not(feature = "failpoints"))]
        let skip_repair = false;
        if mode == OpenMode::ReadWrite && !skip_repair && !disk.health.is_clean() {
            tracing::warn!(disk = %path.display(), "{}", disk.health.describe());
            disk.repair()?;
        }
        Ok(disk)
    }

    fn read_table(dev: Device, ss: u64) -> Result<Disk> {
        let last_lba = dev.len / ss - 1;
        let primary = read_copy(&dev, ss, 1)?;
        // The backup is where the primary says; if that fails, at the end of the disk.
        let backup_lba = match &primary {
            Ok((h, _)) if h.alternate_lba() <= last_lba && h.alternate_lba() > 1 => {
                h.alternate_lba()
            }
            _ => last_lba,
        };
        let mut backup = read_copy(&dev, ss, backup_lba)?;
        if backup.is_err() && backup_lba != last_lba {
            backup = read_copy(&dev, ss, last_lba)?;
        }
        match (primary, backup) {
            (Ok((p, pe)), Ok((b, be))) => {
                let stale = pe != be
                    || p.alternate_lba() != b.my_lba()
                    || p.disk_guid() != b.disk_guid()
                    || p.first_usable() != b.first_usable()
                    || p.last_usable() != b.last_usable();
                let backup_health = if stale {
                    CopyHealth::Stale
                } else {
                    CopyHealth::Valid
                };
                let backup = if stale {
                    backup_from_primary(&p, ss)
                } else {
                    b
                };
                Ok(Disk {
                    dev,
                    sector_size: ss,
                    primary: p,
                    backup,
                    entries: pe,
                    health: Health {
                        primary: CopyHealth::Valid,
                        backup: backup_health,
                    },
                })
            }
            (Ok((p, pe)), Err(problem)) => Ok(Disk {
                dev,
                sector_size: ss,
                backup: backup_from_primary(&p, ss),
                primary: p,
                entries: pe,
                health: Health {
                    primary: CopyHealth::Valid,
                    backup: CopyHealth::Broken(problem),
                },
            }),
            (Err(problem), Ok((b, be))) => Ok(Disk {
                dev,
                sector_size: ss,
                primary: primary_from_backup(&b),
                backup: b,
                entries: be,
                health: Health {
                    primary: CopyHealth::Broken(problem),
                    backup: CopyHealth::Valid,
                },
            }),
            (Err(primary), Err(backup)) => Err(DiskError::NotGpt {
                path: dev.path.clone(),
                primary,
                backup,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dev.path
    }

    pub fn sector_size(&self) -> u64 {
        self.sector_size
    }

    pub fn size_bytes(&self) -> u64 {
        self.dev.len
    }

    pub fn disk_guid(&self) -> Uuid {
        self.primary.disk_guid()
    }

    /// The state of both copies as found when the disk was opened (or after a repair).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Number of entries in the table (valid partition numbers are 1 to this).
    pub fn entry_count(&self) -> u32 {
        self.primary.num_entries()
    }

    fn entry(&self, index: u32) -> gpt::RawEntry {
        gpt::entry_at(&self.entries, self.primary.entry_size(), index - 1)
    }

    fn to_partition(&self, index: u32) -> Option<Partition> {
        let e = self.entry(index);
        (!e.type_guid.is_nil()).then(|| Partition {
            index,
            type_guid: e.type_guid,
            unique_guid: e.unique_guid,
            name: e.name,
            first_lba: e.first_lba,
            last_lba: e.last_lba,
            raw_attributes: e.attributes,
            attrs: SlotAttrs::from_raw(e.attributes),
        })
    }

    /// All used partitions, in table order.
    pub fn partitions(&self) -> Vec<Partition> {
        (1..=self.entry_count())
            .filter_map(|i| self.to_partition(i))
            .collect()
    }

    /// One used partition by its 1-based number.
    pub fn partition(&self, index: u32) -> Result<Partition> {
        if index == 0 || index > self.entry_count() {
            return Err(DiskError::NoSuchPartition {
                path: self.dev.path.clone(),
                index,
                count: self.entry_count(),
            });
        }
        self.to_partition(index)
            .ok_or_else(|| DiskError::EmptyPartition {
                path: self.dev.path.clone(),
                index,
            })
    }

    /// Byte offset and length of partition `index`.
    pub fn partition_byte_range(&self, index: u32) -> Result<(u64, u64)> {
        Ok(self.partition(index)?.byte_range(self.sector_size))
    }

    fn usr_partition(&self, index: u32) -> Result<Partition> {
        let p = self.partition(index)?;
        if !p.is_usr() {
            return Err(DiskError::NotUsr {
                path: self.dev.path.clone(),
                index,
                type_guid: p.type_guid,
            });
        }
        Ok(p)
    }

    fn usr_candidates(&self) -> Vec<Candidate> {
        self.partitions()
            .into_iter()
            .filter(Partition::is_usr)
            .map(|p| Candidate {
                index: p.index,
                attrs: p.attrs,
            })
            .collect()
    }

    fn set_attrs_in_memory(&mut self, index: u32, attrs: SlotAttrs) {
        let raw = self.entry(index).attributes;
        gpt::set_entry_attributes(
            &mut self.entries,
            self.primary.entry_size(),
            index - 1,
            attrs.apply_to(raw),
        );
    }

    fn prioritize_in_memory(&mut self, index: u32, max: Option<u8>) {
        let cands = self.usr_candidates();
        let new = prio::prioritize(&cands, index, max);
        for (cand, priority) in cands.iter().zip(new) {
            let mut attrs = SlotAttrs::from_raw(self.entry(cand.index).attributes);
            attrs.priority = priority;
            self.set_attrs_in_memory(cand.index, attrs);
        }
    }

    /// Writes the in-memory table to both copies, crash-safely.
    fn commit(&mut self) -> Result<()> {
        let primary_is_authoritative = self.health.primary == CopyHealth::Valid;
        write::commit(self, primary_is_authoritative)?;
        self.health = Health {
            primary: CopyHealth::Valid,
            backup: CopyHealth::Valid,
        };
        Ok(())
    }

    /// Sets the slot attributes of one partition (any type, as `cgpt add` does).
    pub fn set_attrs(&mut self, index: u32, attrs: SlotAttrs) -> Result<()> {
        self.partition(index)?;
        if attrs.priority > SlotAttrs::MAX || attrs.tries > SlotAttrs::MAX {
            return Err(DiskError::Invalid {
                path: self.dev.path.clone(),
                message: format!("priority and tries must be 0 to 15 (got {attrs})"),
            });
        }
        self.set_attrs_in_memory(index, attrs);
        self.commit()
    }

    /// cgpt `prioritize`: puts USR partition `index` alone on top, re-ranking the others.
    pub fn prioritize(&mut self, index: u32, max: Option<u8>) -> Result<()> {
        self.usr_partition(index)?;
        if let Some(m) = max {
            if m == 0 || m > SlotAttrs::MAX {
                return Err(DiskError::Invalid {
                    path: self.dev.path.clone(),
                    message: format!("maximum priority must be 1 to 15 (got {m})"),
                });
            }
        }
        self.prioritize_in_memory(index, max);
        self.commit()
    }

    /// Stages a freshly written slot (Flatcar's postinstall): successful=0, tries=1, on top.
    /// One table write, so a power cut leaves either the old or the fully staged table.
    pub fn stage(&mut self, index: u32) -> Result<()> {
        self.usr_partition(index)?;
        self.set_attrs_in_memory(
            index,
            SlotAttrs {
                priority: 0,
                tries: 1,
                successful: false,
            },
        );
        self.prioritize_in_memory(index, None);
        self.commit()
    }

    /// Marks a booted slot good: successful=1, tries=0, on top. One table write.
    pub fn mark_good(&mut self, index: u32) -> Result<()> {
        let p = self.usr_partition(index)?;
        self.set_attrs_in_memory(
            index,
            SlotAttrs {
                priority: p.attrs.priority,
                tries: 0,
                successful: true,
            },
        );
        self.prioritize_in_memory(index, None);
        self.commit()
    }

    /// The boot choice as it stands, without changing anything.
    pub fn peek_next(&self) -> Option<BootChoice> {
        prio::choose_next(&self.usr_candidates())
    }

    /// gptprio.next: chooses the slot to boot and, if it had tries left, writes the decremented
    /// count back before returning. `None` when no USR slot is bootable.
    pub fn boot_next(&mut self) -> Result<Option<(Partition, BootChoice)>> {
        let Some(choice) = self.peek_next() else {
            return Ok(None);
        };
        if choice.needs_write() {
            self.set_attrs_in_memory(choice.index, choice.after);
            self.commit()?;
        }
        Ok(Some((self.partition(choice.index)?, choice)))
    }

    /// Rewrites whichever copy is damaged or stale from the sound one. Returns what was wrong
    /// (`None` when both copies were already fine and nothing was written).
    pub fn repair(&mut self) -> Result<Option<String>> {
        if self.health.is_clean() {
            return Ok(None);
        }
        let what = self.health.describe();
        self.commit()?;
        Ok(Some(what))
    }
}

/// The backup header that goes with a primary: same table, at the primary's alternate LBA.
fn backup_from_primary(p: &Header, ss: u64) -> Header {
    let mut b = p.clone();
    let my = p.alternate_lba();
    b.set_location(my, 1, my - p.entries_sectors(ss));
    b
}

/// The primary header that goes with a backup: LBA 1, entries from LBA 2.
fn primary_from_backup(b: &Header) -> Header {
    let mut p = b.clone();
    p.set_location(1, b.my_lba(), 2);
    p
}

/// For image files: the sector size whose LBA 1 (or last LBA) holds a GPT signature.
fn detect_sector_size(dev: &Device) -> Result<u64> {
    for ss in [512u64, 4096] {
        if dev.len >= ss * 2 && dev.read_at(ss, 8)? == gpt::SIGNATURE {
            return Ok(ss);
        }
    }
    for ss in [512u64, 4096] {
        if dev.len >= ss * 3
            && dev.len.is_multiple_of(ss)
            && dev.read_at(dev.len - ss, 8)? == gpt::SIGNATURE
        {
            return Ok(ss);
        }
    }
    Ok(512)
}
