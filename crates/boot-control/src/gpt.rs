//! The GPT-attribute back-end of [`BootControl`].

use std::path::{Path, PathBuf};

use fastpatch_disk::{Disk, OpenMode};
use uuid::Uuid;

use crate::{BootControl, BootControlError, Result, RollbackOutcome, Slot, SlotExtent, SlotState};

/// Slots on a GPT disk (image file or block device), chosen by gptprio attributes.
pub struct GptBootControl {
    disk: PathBuf,
    booted: Slot,
}

impl GptBootControl {
    /// A disk whose booted slot the caller knows (tests, the demo, a config setting).
    pub fn new(disk: impl Into<PathBuf>, booted: Slot) -> GptBootControl {
        GptBootControl {
            disk: disk.into(),
            booted,
        }
    }

    /// A disk whose booted slot is the USR partition with this unique GUID.
    pub fn from_partuuid(disk: impl Into<PathBuf>, partuuid: Uuid) -> Result<GptBootControl> {
        let disk = disk.into();
        let d = Disk::open(&disk, OpenMode::ReadOnly)?;
        let booted = [Slot::A, Slot::B]
            .into_iter()
            .find(|s| {
                d.partition(s.partition_index())
                    .is_ok_and(|p| p.unique_guid == partuuid)
            })
            .ok_or_else(|| {
                BootControlError::UnknownBootedSlot(format!(
                    "no USR slot of {} has partition GUID {partuuid}",
                    disk.display()
                ))
            })?;
        Ok(GptBootControl { disk, booted })
    }

    pub fn disk_path(&self) -> &Path {
        &self.disk
    }

    fn open(&self, mode: OpenMode) -> Result<Disk> {
        Ok(Disk::open(&self.disk, mode)?)
    }

    fn state_of(disk: &Disk, slot: Slot) -> Result<SlotState> {
        let p = disk.partition(slot.partition_index())?;
        if !p.is_usr() {
            return Err(fastpatch_disk::DiskError::NotUsr {
                path: disk.path().to_path_buf(),
                index: p.index,
                type_guid: p.type_guid,
            }
            .into());
        }
        let (byte_offset, byte_len) = p.byte_range(disk.sector_size());
        Ok(SlotState {
            slot,
            partition_index: p.index,
            unique_guid: p.unique_guid,
            attrs: p.attrs,
            byte_offset,
            byte_len,
        })
    }
}

impl BootControl for GptBootControl {
    fn booted(&self) -> Slot {
        self.booted
    }

    fn slot_state(&self, slot: Slot) -> Result<SlotState> {
        Self::state_of(&self.open(OpenMode::ReadOnly)?, slot)
    }

    fn extent(&self, slot: Slot) -> Result<SlotExtent> {
        let s = self.slot_state(slot)?;
        Ok(SlotExtent {
            slot,
            device: self.disk.clone(),
            offset: s.byte_offset,
            len: s.byte_len,
        })
    }

    fn stage(&mut self, slot: Slot) -> Result<()> {
        self.check_writable(slot)?;
        self.open(OpenMode::ReadWrite)?
            .stage(slot.partition_index())?;
        tracing::info!(disk = %self.disk.display(), %slot, "slot staged: tries=1, top priority");
        Ok(())
    }

    fn mark_booted_good(&mut self) -> Result<()> {
        self.open(OpenMode::ReadWrite)?
            .mark_good(self.booted.partition_index())?;
        tracing::info!(disk = %self.disk.display(), slot = %self.booted, "booted slot marked good");
        Ok(())
    }

    fn next_boot(&self) -> Result<Option<Slot>> {
        let disk = self.open(OpenMode::ReadOnly)?;
        Ok(disk
            .peek_next()
            .and_then(|c| Slot::from_partition_index(c.index)))
    }

    fn rollback(&mut self) -> Result<RollbackOutcome> {
        let target = self.booted.other();
        let mut disk = self.open(OpenMode::ReadWrite)?;
        let state = Self::state_of(&disk, target)?;
        if !state.attrs.successful {
            return Err(BootControlError::NotKnownGood(target));
        }
        disk.prioritize(target.partition_index(), None)?;
        let next = disk
            .peek_next()
            .and_then(|c| Slot::from_partition_index(c.index))
            .unwrap_or(target);
        tracing::info!(disk = %self.disk.display(), %next, "rolled back");
        Ok(RollbackOutcome { next })
    }
}
