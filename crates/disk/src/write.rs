//! The one place that writes a partition table, and the order that makes it crash-safe.
//!
//! A table change touches two copies (primary at LBA 1, backup at the end). Each copy is its
//! entry array plus a header whose CRC covers that array. We never write the copy that readers
//! currently trust until the other copy holds the new table durably:
//!
//! 1. write the non-authoritative copy's entries, then its header, then sync;
//! 2. write the authoritative copy's entries, then its header, then sync.
//!
//! A cut anywhere in step 1 leaves the authoritative copy untouched (old table). A cut in step
//! 2 leaves the copy from step 1 valid and durable (new table), and the half-written copy fails
//! its CRC, so readers fall back to the new one. Readers prefer a valid primary, so after a cut
//! between the steps the old table still wins — never a mix, never neither.

use crate::disk::Disk;
#[cfg(feature = "failpoints")]
use crate::error::DiskError;
use crate::error::Result;

/// Simulated power cuts for tests: with the `failpoints` feature, arming one of these names
/// makes the write stop right there, as a power cut would.
macro_rules! cut_point {
    ($disk:expr, $name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| Err(DiskError::InjectedCut {
            path: $disk.dev.path.clone(),
            point: $name,
        }));
    };
}

/// The fail-points, in the order a write passes them.
pub const CUT_POINTS: &[&str] = &[
    "gpt-first-entries-written",
    "gpt-first-header-written",
    "gpt-first-copy-synced",
    "gpt-second-entries-written",
    "gpt-second-header-written",
];

/// Writes `disk`'s in-memory table to both copies in the safe order. `primary_trusted` says
/// which copy readers currently trust (and is therefore written last).
pub(crate) fn commit(disk: &mut Disk, primary_trusted: bool) -> Result<()> {
    let ss = disk.sector_size;
    disk.primary.set_entries_crc(&disk.entries);
    disk.backup.set_entries_crc(&disk.entries);
    let (first, second) = if primary_trusted {
        (&disk.backup, &disk.primary)
    } else {
        (&disk.primary, &disk.backup)
    };
    tracing::debug!(
        disk = %disk.dev.path.display(),
        first_lba = first.my_lba(),
        second_lba = second.my_lba(),
        "writing partition table"
    );

    disk.dev.write_at(first.entries_lba() * ss, &disk.entries)?;
    cut_point!(disk, "gpt-first-entries-written");
    disk.dev.write_at(first.my_lba() * ss, first.as_bytes())?;
    cut_point!(disk, "gpt-first-header-written");
    disk.dev.sync()?;
    cut_point!(disk, "gpt-first-copy-synced");

    disk.dev
        .write_at(second.entries_lba() * ss, &disk.entries)?;
    cut_point!(disk, "gpt-second-entries-written");
    disk.dev.write_at(second.my_lba() * ss, second.as_bytes())?;
    cut_point!(disk, "gpt-second-header-written");
    disk.dev.sync()?;
    Ok(())
}
