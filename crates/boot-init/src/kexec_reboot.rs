//! `fastpatch boot kexec`: a reboot that skips the firmware and the chooser's own kernel. On
//! the running machine it does what the chooser's stage 1 does at boot, then leaves the
//! kernel loaded for `systemctl kexec` (locksmithd with `REBOOT_METHOD=kexec`):
//!
//! 1. the gptprio choice as the chooser would make it (read-only first);
//! 2. the chosen slot's seal checked with the release keys;
//! 3. the slot mapped through dm-verity as [`NEXT_DM_NAME`] and, on its first boot, read
//!    whole, so a changed block refuses it before anything of it runs;
//! 4. its own kernel and initramfs loaded with `kexec_file_load`, with the chooser's command
//!    line for it ([`slot::slot_cmdline`] over this boot's line minus this release's words);
//! 5. **the try spent on disk** (`boot_next`, the chooser's code), last: from here the slot's
//!    next start is a boot attempt, so a kexec'd boot that never becomes good falls back on
//!    the next reboot exactly as a firmware boot would. A failure before this point changes
//!    nothing on disk and unloads the kernel.
//!
//! A slot whose seal does not verify is not loaded (an error); a firmware reboot then lets the
//! chooser take it out of the boot order.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fastpatch_boot_control::Slot;
use fastpatch_disk::{partition_path, Disk, OpenMode, Partition};
use fastpatch_payload::seal::Seal;

use crate::slot::{self, NEXT_DM_NAME};
use crate::verity::{self, SlotProblem};
use crate::{result_line, slot_name, sys, BootConfig};

/// Where the next slot's /usr is mounted while its kernel is read.
pub const NEXT_USR_MOUNT: &str = "/run/fastpatch/kexec-usr";
/// The running release's own command line words.
const RUNNING_RELEASE_CMDLINE: &str = "/usr/boot/cmdline";

/// What to load.
#[derive(Debug, Clone)]
pub struct KexecOptions {
    /// The boot disk (default: `fastpatch.disk=` of this boot's command line, as the chooser).
    pub disk: Option<PathBuf>,
    /// Release keys: PEM files or directories; paths that do not exist are skipped.
    pub keys: Vec<PathBuf>,
    /// This boot's command line (`/proc/cmdline`).
    pub cmdline_path: PathBuf,
}

impl Default for KexecOptions {
    fn default() -> Self {
        KexecOptions {
            disk: None,
            keys: vec![
                PathBuf::from(crate::ENGINE_TRUSTED_KEY),
                PathBuf::from("/usr/share/fastpatch/keys.d"),
                PathBuf::from("/etc/fastpatch/keys.d"),
            ],
            cmdline_path: PathBuf::from("/proc/cmdline"),
        }
    }
}

/// The slot that the next `kexec` starts.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub slot: String,
    pub version: String,
    pub tries_before: u8,
    pub tries_after: u8,
    pub cmdline: String,
}

/// Loads the next boot's kernel (steps 1–5 above). Returns what was loaded.
pub fn load_next_boot(opts: &KexecOptions) -> Result<Loaded> {
    let current = std::fs::read_to_string(&opts.cmdline_path)
        .with_context(|| format!("reading {}", opts.cmdline_path.display()))?;
    let disk_path = match &opts.disk {
        Some(d) => d.clone(),
        None => PathBuf::from(boot_disk(&current)),
    };
    let chosen = peek_choice(&disk_path)?;
    let name = slot_name(chosen.index);
    let keys = fastpatch_payload::keys::load_key_set(&opts.keys)
        .context("loading the release keys")?
        .into_iter()
        .map(|(_, k)| k)
        .collect::<Vec<_>>();
    let dev = partition_path(&disk_path, chosen.index);
    let seal = verity::verified_seal(&dev, &keys).map_err(|p| match p {
        SlotProblem::Invalid(e) => e.context(format!(
            "USR-{name} is not loaded: its seal does not verify (a firmware reboot lets the \
             chooser take it out of the boot order)"
        )),
        SlotProblem::Unreadable(e) => e,
    })?;
    tracing::info!(
        slot = %format!("USR-{name}"),
        version = %seal.body.version,
        "the next boot's slot and its seal verify"
    );
    let cmdline = load_mapped(&dev, &chosen, &seal, &current)?;
    let spent = spend_try(&disk_path, chosen.index).inspect_err(|_| {
        if let Err(e) = sys::kexec_unload() {
            tracing::warn!("cannot unload the kexec kernel again: {e}");
        }
    })?;
    Ok(Loaded {
        slot: name,
        version: seal.body.version.clone(),
        tries_before: spent.0,
        tries_after: spent.1,
        cmdline,
    })
}

/// The chooser's boot disk: the last `fastpatch.disk=` of the command line, else its default.
fn boot_disk(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("fastpatch.disk="))
        .next_back()
        .map_or_else(|| BootConfig::default().disk, str::to_string)
}

/// Prints what was loaded: a line for people and the result line the harness reads.
pub fn report(loaded: &Loaded) {
    tracing::info!(
        slot = %format!("USR-{}", loaded.slot),
        version = %loaded.version,
        tries_before = loaded.tries_before,
        tries_after = loaded.tries_after,
        cmdline = %loaded.cmdline,
        "kernel loaded for a kexec reboot; the try is spent on disk"
    );
    eprintln!(
        "{}",
        result_line(
            "kexec-load",
            &[
                ("slot", &loaded.slot),
                ("version", &loaded.version),
                ("tries_before", &loaded.tries_before.to_string()),
                ("tries_after", &loaded.tries_after.to_string()),
            ]
        )
    );
}

/// Step 1: the slot the chooser would boot now, without writing anything.
fn peek_choice(disk_path: &Path) -> Result<Partition> {
    let disk = Disk::open(disk_path, OpenMode::ReadOnly)
        .with_context(|| format!("reading the GPT of {}", disk_path.display()))?;
    let Some(choice) = disk.peek_next() else {
        bail!(
            "no bootable USR slot on {} (every slot has priority 0, or no tries left and was \
             never marked successful)",
            disk_path.display()
        );
    };
    Ok(disk.partition(choice.index)?)
}

/// Steps 3 and 4, with the verity device and its mount removed again whatever happens.
fn load_mapped(dev: &Path, chosen: &Partition, seal: &Seal, current: &str) -> Result<String> {
    // A device left by an earlier run that died half-way.
    let _ = sys::umount(NEXT_USR_MOUNT);
    let _ = verity::unmap_verity(NEXT_DM_NAME);
    let mapped = verity::map_verity(NEXT_DM_NAME, dev, seal)?;
    let loaded = read_and_load(&mapped, chosen, seal, current);
    let unmounted = sys::umount(NEXT_USR_MOUNT);
    let unmapped = verity::unmap_verity(NEXT_DM_NAME);
    let cmdline = loaded?;
    if let Err(e) = unmounted.map_err(anyhow::Error::from).and(unmapped) {
        tracing::warn!("cleaning up after loading the kernel: {e:#}");
    }
    Ok(cmdline)
}

fn read_and_load(mapped: &str, chosen: &Partition, seal: &Seal, current: &str) -> Result<String> {
    if !chosen.attrs.successful {
        let took = verity::read_whole(mapped, seal).with_context(|| {
            format!(
                "USR-{} is not loaded: it does not verify whole on its first boot",
                slot_name(chosen.index)
            )
        })?;
        tracing::info!(
            mib = seal.body.data_bytes >> 20,
            secs = %format!("{:.1}", took.as_secs_f64()),
            "first boot of this slot: all of /usr verified"
        );
    }
    verity::mount_usr(mapped, NEXT_USR_MOUNT)?;
    let base =
        slot::without_release_words(current, &optional_text(Path::new(RUNNING_RELEASE_CMDLINE))?);
    load_slot_kernel(Path::new(NEXT_USR_MOUNT), &base, chosen, seal, &[])
}

/// Loads the slot's own kernel and initramfs from its verified /usr mounted at `usr`, with
/// [`slot::slot_cmdline`] over `base` and the release's words; returns the command line. The
/// chooser's stage 1 and `fastpatch boot kexec` both load through here.
pub fn load_slot_kernel(
    usr: &Path,
    base: &str,
    chosen: &Partition,
    seal: &Seal,
    refused: &[Slot],
) -> Result<String> {
    let open = |rel: &str| {
        let p = usr.join(rel);
        File::open(&p).with_context(|| format!("opening {}", p.display()))
    };
    let kernel = open("boot/vmlinuz")?;
    let initrd = open("boot/initramfs.img")?;
    let release = optional_text(&usr.join(slot::RELEASE_CMDLINE))?;
    let cmdline = slot::slot_cmdline(
        base,
        &release,
        &chosen.unique_guid.to_string(),
        &seal.body.root_hash,
        refused,
    );
    sys::kexec_file_load(&kernel, &initrd, &cmdline).context("kexec_file_load")?;
    Ok(cmdline)
}

/// A file's text, or nothing when it does not exist.
fn optional_text(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Step 5: gptprio.next on disk, which must still choose `index`. Returns the tries before and
/// after.
fn spend_try(disk_path: &Path, index: u32) -> Result<(u8, u8)> {
    let mut disk = Disk::open(disk_path, OpenMode::ReadWrite)
        .with_context(|| format!("reading the GPT of {}", disk_path.display()))?;
    let Some(choice) = disk.peek_next().filter(|c| c.index == index) else {
        bail!(
            "the boot order of {} changed while the kernel was loading; not rebooting into USR-{}",
            disk_path.display(),
            slot_name(index)
        );
    };
    disk.boot_next()
        .with_context(|| format!("spending a try of USR-{} on disk", slot_name(index)))?;
    Ok((choice.before.tries, choice.after.tries))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_boot_disk_is_the_choosers() {
        assert_eq!(
            super::boot_disk("console=ttyS0 fastpatch.release=1"),
            "/dev/vda"
        );
        assert_eq!(
            super::boot_disk("fastpatch.disk=/dev/sda fastpatch.disk=/dev/nvme0n1"),
            "/dev/nvme0n1"
        );
    }
}
