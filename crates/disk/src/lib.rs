//! fastpatch's disk layer: GPT on image files and block devices, the ChromeOS/Flatcar slot
//! attribute bits, the gptprio boot choice, and crash-safe table writes.
//!
//! ```no_run
//! use fastpatch_disk::{Disk, OpenMode, USR_B_INDEX};
//! let mut disk = Disk::open("disk.img".as_ref(), OpenMode::ReadWrite)?;
//! disk.stage(USR_B_INDEX)?;                 // successful=0 tries=1, on top
//! let next = disk.boot_next()?;              // gptprio.next: picks B, tries 1 -> 0
//! # Ok::<(), fastpatch_disk::DiskError>(())
//! ```

mod attrs;
#[cfg(feature = "cli")]
pub mod cli;
mod device;
mod disk;
mod error;
mod gpt;
mod layout;
#[cfg(feature = "failpoints")]
pub mod power;
mod prio;
#[cfg(test)]
mod robustness_tests;
mod target;
mod types;
mod write;

pub use attrs::{SlotAttrs, SLOT_BITS_MASK};
pub use device::OpenMode;
pub use disk::{CopyHealth, Disk, Health, Partition};
pub use error::{DiskError, Result};
pub use gpt::HeaderProblem;
pub use layout::{create, LayoutSpec};
pub use prio::{choose_next, prioritize, BootChoice, Candidate};
pub use target::{partition_path, split_partition_path};
pub use types::*;
pub use write::CUT_POINTS;
