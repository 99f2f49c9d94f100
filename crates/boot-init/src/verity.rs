//! A USR slot through dm-verity, shared by the chooser (stage 1 and 2 of the initramfs) and
//! `fastpatch boot kexec` on a running machine: the seal checked with the release keys, the
//! verity device created and removed by name, the whole-slot read of a first boot, and /usr
//! mounted read-only.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fastpatch_payload::seal::{self, Seal};
use fastpatch_payload::PayloadError;
use rsa::RsaPublicKey;

use crate::{slot, sys};

/// Why a slot was not booted.
pub enum SlotProblem {
    /// The seal is missing, malformed or not signed by a trusted key, or a slot on its first
    /// boot has a block that does not match its dm-verity hash: refuse the slot.
    Invalid(anyhow::Error),
    /// The slot could not be read or started: the boot fails, the slot is left as it is.
    Unreadable(anyhow::Error),
}

impl From<anyhow::Error> for SlotProblem {
    fn from(e: anyhow::Error) -> SlotProblem {
        SlotProblem::Unreadable(e)
    }
}

/// Reads the seal of partition `dev` and checks it with `keys`.
pub fn verified_seal(dev: &Path, keys: &[RsaPublicKey]) -> Result<Seal, SlotProblem> {
    let read = || -> Result<Seal, PayloadError> {
        let mut f = File::open(dev).map_err(|error| PayloadError::Io {
            context: format!("opening {}", dev.display()),
            error,
        })?;
        let seal = seal::read_seal(&mut f)?;
        seal.verify(keys)?;
        Ok(seal)
    };
    read().map_err(|e| match e {
        PayloadError::Io { .. } => SlotProblem::Unreadable(e.into()),
        other => SlotProblem::Invalid(other.into()),
    })
}

/// Maps `dev` through dm-verity as described by `seal`, as device-mapper device `name`, and
/// returns the verified device (`/dev/dm-N`).
pub fn map_verity(name: &str, dev: &Path, seal: &Seal) -> Result<String> {
    let (sectors, params) = seal.body.dm_target(&dev.to_string_lossy());
    let mut create = slot::dm_create(name, &slot::verity_uuid(name, &seal.body.root_hash))
        .map_err(anyhow::Error::msg)?;
    sys::dm_ioctl(slot::DM_DEV_CREATE, &mut create)
        .with_context(|| format!("creating the dm device {name}"))?;
    let (_, minor) = slot::dm_dev(&create);
    let mut table =
        slot::dm_table_load(name, sectors, "verity", &params).map_err(anyhow::Error::msg)?;
    let loaded = sys::dm_ioctl(slot::DM_TABLE_LOAD, &mut table)
        .context("loading the verity table")
        .and_then(|()| {
            let mut resume = slot::dm_ioctl(name, 0).map_err(anyhow::Error::msg)?;
            sys::dm_ioctl(slot::DM_DEV_SUSPEND, &mut resume).context("activating the verity device")
        });
    if let Err(e) = loaded {
        // A device without a table is no use to anyone: remove it again.
        let _ = unmap_verity(name);
        return Err(e);
    }
    Ok(format!("/dev/dm-{minor}"))
}

/// Removes the verity device `name`.
pub fn unmap_verity(name: &str) -> Result<()> {
    let mut remove = slot::dm_ioctl(name, 0).map_err(anyhow::Error::msg)?;
    sys::dm_ioctl(slot::DM_DEV_REMOVE, &mut remove)
        .with_context(|| format!("removing the dm device {name}"))
}

/// Reads a slot on its first boot whole through dm-verity before anything of it runs: a block
/// that does not match its hash fails the read (the kernel answers EIO), so a slot changed
/// after it was installed is refused before it runs instead of failing somewhere in its boot.
/// Returns how long the read took.
pub fn read_whole(mapped: &str, seal: &Seal) -> Result<Duration> {
    use std::io::Read;
    let started = Instant::now();
    let mut f = File::open(mapped).with_context(|| format!("opening {mapped}"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => at += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => bail!(
                "/usr does not read back through dm-verity at byte {at} of {}: {e} (a block does not match its hash)",
                seal.body.data_bytes
            ),
        }
    }
    if at != seal.body.data_bytes {
        bail!(
            "/usr through dm-verity is {at} bytes, its seal says {}",
            seal.body.data_bytes
        );
    }
    Ok(started.elapsed())
}

/// Mounts the verified device `mapped` (ext4) read-only on `target`, creating it.
pub fn mount_usr(mapped: &str, target: &str) -> Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    sys::mount(mapped, target, "ext4", libc::MS_RDONLY, None)
        .with_context(|| format!("mounting {mapped} read-only on {target}"))
}
