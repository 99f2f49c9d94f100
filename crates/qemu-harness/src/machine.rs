//! A test machine: one disk image booted again and again, with numbered serial logs, the way
//! the update scenarios need it (boot → inspect the image → boot again).

use std::path::{Path, PathBuf};

use fastpatch_disk::{create, Disk, LayoutSpec, OpenMode, SlotAttrs};

use crate::{boot, format_root, health_file, write_usr_image_with, BootOutcome, BootSpec, Lab};
use crate::{FsFile, Result};

const MIB: u64 = 1 << 20;

/// The small Flatcar-like layout the boot tests use: 16 MiB USR slots, ROOT of ~30 MiB.
pub fn test_layout() -> LayoutSpec {
    LayoutSpec {
        total_size: 72 * MIB,
        efi_size: 2 * MIB,
        bios_boot_size: MIB,
        usr_size: 16 * MIB,
        oem_size: 2 * MIB,
        ..LayoutSpec::default()
    }
}

/// A disk image plus the lab to boot it with.
pub struct Machine<'a> {
    pub lab: &'a Lab,
    pub name: String,
    pub disk: PathBuf,
    /// The initramfs to boot (the lab's default unless replaced).
    pub initrd: PathBuf,
    /// Kernel command line words for every boot.
    pub cmdline: Vec<String>,
    /// Every boot so far, in order.
    pub boots: Vec<BootOutcome>,
}

impl<'a> Machine<'a> {
    /// Creates `dir/<name>.img` with [`test_layout`], version `version` (healthy) on USR-A and
    /// an empty ext4 ROOT.
    pub fn new(lab: &'a Lab, dir: &Path, name: &str, version: &str) -> Result<Machine<'a>> {
        let disk = dir.join(format!("{name}.img"));
        create(&disk, &test_layout(), false)?;
        write_usr_image_with(
            &disk,
            fastpatch_disk::USR_A_INDEX,
            version,
            &[health_file(true)],
        )?;
        format_root(&disk, &[])?;
        Ok(Machine {
            lab,
            name: name.to_string(),
            disk,
            initrd: lab.initramfs.clone(),
            cmdline: Vec::new(),
            boots: Vec::new(),
        })
    }

    /// Uses an initramfs with `extra` files for the following boots.
    pub fn with_initramfs_files(&mut self, extra: &[FsFile]) -> Result<()> {
        self.initrd = self.lab.initramfs_with(&self.name, extra)?;
        Ok(())
    }

    /// The spec of the next boot (log `<name>-<n>.log`), for tweaks before [`Machine::run`].
    pub fn next_spec(&self) -> BootSpec {
        let n = self.boots.len() + 1;
        let mut spec = self.lab.spec(&format!("{}-{n}", self.name), &self.disk);
        spec.initrd = self.initrd.clone();
        spec.cmdline.extend(self.cmdline.iter().cloned());
        spec
    }

    /// Boots with [`Machine::next_spec`] and records the outcome.
    pub fn boot(&mut self) -> Result<&BootOutcome> {
        let spec = self.next_spec();
        self.run(&spec)
    }

    /// Boots with a given spec and records the outcome.
    pub fn run(&mut self, spec: &BootSpec) -> Result<&BootOutcome> {
        let outcome = boot(spec)?;
        self.boots.push(outcome);
        Ok(self.boots.last().expect("just pushed"))
    }

    /// The slot attributes of partition `index`, read from the image (QEMU must be stopped).
    pub fn attrs(&self, index: u32) -> Result<SlotAttrs> {
        let disk = Disk::open(&self.disk, OpenMode::ReadOnly)?;
        Ok(disk.partition(index)?.attrs)
    }
}
