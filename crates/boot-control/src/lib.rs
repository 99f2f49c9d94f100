//! The boot-control boundary: which slot is running, and the few operations an update needs
//! on the slots. The [`BootControl`] trait keeps the engine independent of how slots are
//! chosen at boot; [`GptBootControl`] is the Flatcar/ChromeOS GPT-attribute back-end.
//!
//! Two rules live here so that no caller can forget them:
//! - the booted slot is never handed out as an install target;
//! - the other slot (the fallback) is not overwritten until the running boot is marked good.

mod cmdline;
mod gpt;

pub use cmdline::{
    booted_partuuid_from_cmdline, refused_slots, refused_word, UsrSpec, REFUSED_KEY,
};
pub use gpt::GptBootControl;

use std::fmt;

use fastpatch_disk::SlotAttrs;
use uuid::Uuid;

/// One of the two USR slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// Flatcar's partition number for this slot.
    pub fn partition_index(self) -> u32 {
        match self {
            Slot::A => fastpatch_disk::USR_A_INDEX,
            Slot::B => fastpatch_disk::USR_B_INDEX,
        }
    }

    pub fn from_partition_index(index: u32) -> Option<Slot> {
        match index {
            fastpatch_disk::USR_A_INDEX => Some(Slot::A),
            fastpatch_disk::USR_B_INDEX => Some(Slot::B),
            _ => None,
        }
    }

    /// The partition label, `USR-A` or `USR-B`.
    pub fn label(self) -> &'static str {
        match self {
            Slot::A => "USR-A",
            Slot::B => "USR-B",
        }
    }

    pub fn from_label(label: &str) -> Option<Slot> {
        [Slot::A, Slot::B].into_iter().find(|s| s.label() == label)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Everything the engine needs to know about a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub slot: Slot,
    pub partition_index: u32,
    pub unique_guid: Uuid,
    pub attrs: SlotAttrs,
    /// Byte offset and length of the slot on the disk.
    pub byte_offset: u64,
    pub byte_len: u64,
}

/// Where a slot's bytes are: the device (or image file) and the byte range on it. What an
/// installer writes and what a delta reads, handed out by the boot control so no caller puts
/// a path and a partition's offsets together itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotExtent {
    pub slot: Slot,
    pub device: std::path::PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// What `rollback` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackOutcome {
    /// The slot that boots next after the rollback.
    pub next: Slot,
}

#[derive(Debug, thiserror::Error)]
pub enum BootControlError {
    #[error(transparent)]
    Disk(#[from] fastpatch_disk::DiskError),
    #[error("{0} is the booted slot; it is never written while running")]
    BootedSlot(Slot),
    #[error("the running boot ({0}) is not marked good yet; the other slot is its fallback and stays untouched until it is")]
    BootNotMarkedGood(Slot),
    #[error("{0} has never booted successfully; refusing to roll back onto it")]
    NotKnownGood(Slot),
    #[error("cannot tell which slot is booted: {0}")]
    UnknownBootedSlot(String),
}

pub type Result<T, E = BootControlError> = std::result::Result<T, E>;

/// The operations an update needs on the slots. Implementations must make each mutating call
/// atomic with respect to power loss: after a cut, the slot choice is the old or the new one.
pub trait BootControl {
    /// The slot this system booted from.
    fn booted(&self) -> Slot;

    fn slot_state(&self, slot: Slot) -> Result<SlotState>;

    /// Checks that `slot` may be overwritten now: it is not the booted slot, and the booted
    /// slot is marked good (otherwise `slot` is the only known-good fallback).
    fn check_writable(&self, slot: Slot) -> Result<SlotState> {
        if slot == self.booted() {
            return Err(BootControlError::BootedSlot(slot));
        }
        if !self.slot_state(self.booted())?.attrs.successful {
            return Err(BootControlError::BootNotMarkedGood(self.booted()));
        }
        self.slot_state(slot)
    }

    /// Where `slot`'s bytes are (to read the booted slot as a delta's source).
    fn extent(&self, slot: Slot) -> Result<SlotExtent>;

    /// The slot to install onto, once [`BootControl::check_writable`] allows it.
    fn writable_target(&self, slot: Slot) -> Result<SlotExtent> {
        self.check_writable(slot)?;
        self.extent(slot)
    }

    /// Marks a freshly written slot to be tried once on the next boot (successful=0, tries=1,
    /// top priority).
    fn stage(&mut self, slot: Slot) -> Result<()>;

    /// Marks the booted slot good (successful=1, tries=0, top priority).
    fn mark_booted_good(&mut self) -> Result<()>;

    /// The slot the boot chooser would pick now (without spending a try).
    fn next_boot(&self) -> Result<Option<Slot>>;

    /// Makes the other slot boot next, if it holds a known-good image.
    fn rollback(&mut self) -> Result<RollbackOutcome>;
}
