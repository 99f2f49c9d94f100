//! Which disk and slot this machine booted from, and what the partition table says about
//! the passive slot.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fastpatch_boot_control::{BootControl, GptBootControl, Slot, UsrSpec};

use super::config::{BootedSlot, DaemonConfig};

/// The disk that holds the partition with this GUID (via /dev/disk/by-partuuid and sysfs).
fn disk_of_partuuid(uuid: &uuid::Uuid) -> Result<PathBuf> {
    let link = PathBuf::from(format!("/dev/disk/by-partuuid/{uuid}"));
    let part =
        std::fs::canonicalize(&link).with_context(|| format!("resolving {}", link.display()))?;
    let name = part
        .file_name()
        .context("partition device has no name")?
        .to_string_lossy()
        .to_string();
    let sys = std::fs::canonicalize(format!("/sys/class/block/{name}"))
        .with_context(|| format!("finding {name} in /sys/class/block"))?;
    let parent = sys
        .parent()
        .and_then(Path::file_name)
        .context("partition has no parent device in sysfs")?;
    Ok(PathBuf::from("/dev").join(parent))
}

/// The boot control the config describes.
pub fn boot_control(cfg: &DaemonConfig) -> Result<GptBootControl> {
    let slot = match cfg.booted_slot {
        BootedSlot::A => Some(Slot::A),
        BootedSlot::B => Some(Slot::B),
        BootedSlot::Cmdline => None,
    };
    if let Some(slot) = slot {
        let disk = cfg
            .disk
            .clone()
            .context("engine config: `disk` must be set when booted_slot is explicit")?;
        return Ok(GptBootControl::new(disk, slot));
    }
    let cmdline = std::fs::read_to_string(&cfg.cmdline_path)
        .with_context(|| format!("reading {}", cfg.cmdline_path.display()))?;
    let uuid = match fastpatch_boot_control::booted_partuuid_from_cmdline(&cmdline) {
        Some(UsrSpec::PartUuid(u)) => u,
        Some(UsrSpec::Device(dev)) => anyhow::bail!(
            "the kernel command line names the USR partition as {dev}, not by PARTUUID; set booted_slot (and disk) in the engine config"
        ),
        None => anyhow::bail!(
            "{} has no mount.usr=, verity.usr= or usr= naming the booted USR partition; set booted_slot (and disk) in the engine config",
            cfg.cmdline_path.display()
        ),
    };
    let disk = match &cfg.disk {
        Some(d) => d.clone(),
        None => disk_of_partuuid(&uuid)?,
    };
    Ok(GptBootControl::from_partuuid(disk, uuid)?)
}

/// Whether this boot's chooser refused the passive slot: fastpatch-init adds
/// `fastpatch.refused=USR-X` to the command line of the slot it boots after refusing one.
/// Logged, since the chooser's own messages are only on the console.
pub fn passive_refused(cfg: &DaemonConfig, boot: &dyn BootControl) -> Result<bool> {
    let cmdline = match std::fs::read_to_string(&cfg.cmdline_path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", cfg.cmdline_path.display())),
    };
    let refused = fastpatch_boot_control::refused_slots(&cmdline);
    for slot in &refused {
        tracing::warn!(
            slot = %slot,
            "the boot chooser refused {slot} this boot (its seal or dm-verity data did not verify) and booted {}",
            boot.booted()
        );
    }
    Ok(refused.contains(&boot.booted().other()))
}

/// Whether the passive slot is staged right now: it would boot next, on a try.
pub fn passive_staged(boot: &dyn BootControl) -> Result<bool> {
    let passive = boot.booted().other();
    let st = boot.slot_state(passive)?;
    Ok(!st.attrs.successful && st.attrs.tries > 0 && boot.next_boot()? == Some(passive))
}
