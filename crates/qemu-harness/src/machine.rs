//! A test machine: one disk image booted again and again, with numbered serial logs, the way
//! the update scenarios need it (boot → inspect the image → boot again).

use std::path::{Path, PathBuf};

use fastpatch_disk::{create, Disk, LayoutSpec, OpenMode, SlotAttrs};

use crate::{boot, boot_until, format_root, health_file, write_filesystem, write_usr_image_with};
use crate::{BootOutcome, BootSpec, FsFile, Lab, OsVersion, Result};

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

/// The layout of the update scenarios: USR slots of 48 MiB, room for a version's USR image
/// with the `fastpatch` binary (with locksmithd and locksmithctl) in it; ROOT of
/// ~33 MiB.
pub fn engine_layout() -> LayoutSpec {
    LayoutSpec {
        total_size: 136 * MIB,
        usr_size: 48 * MIB,
        ..test_layout()
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
    /// A machine of `disk`, not booted yet, with the lab's initramfs and no extra words.
    fn on_disk(lab: &'a Lab, name: &str, disk: PathBuf) -> Machine<'a> {
        Machine {
            lab,
            name: name.to_string(),
            disk,
            initrd: lab.initramfs.clone(),
            cmdline: Vec::new(),
            boots: Vec::new(),
        }
    }

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
        Ok(Machine::on_disk(lab, name, disk))
    }

    /// Creates `dir/<name>.img` with [`engine_layout`], `os` on USR-A (good, priority 1) and
    /// an empty ext4 ROOT.
    pub fn with_os(lab: &'a Lab, dir: &Path, name: &str, os: &OsVersion) -> Result<Machine<'a>> {
        let disk = dir.join(format!("{name}.img"));
        create(&disk, &engine_layout(), false)?;
        write_filesystem(&disk, fastpatch_disk::USR_A_INDEX, "USR-A", &os.files()?)?;
        format_root(&disk, &[])?;
        Ok(Machine::on_disk(lab, name, disk))
    }

    /// Formats ROOT again with `files` (before the first boot: what the machine already has).
    pub fn with_root_files(&self, files: &[FsFile]) -> Result<()> {
        format_root(&self.disk, files)
    }

    /// A file on ROOT (path inside the file system, e.g. `/lib/x` for the guest's `/var/lib/x`),
    /// read between boots with `debugfs`; `None` when it does not exist.
    pub fn root_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let image =
            tempfile::NamedTempFile::new().map_err(crate::io_err("creating a temp file"))?;
        std::fs::write(
            image.path(),
            self.partition_bytes(fastpatch_boot_init::ROOT_INDEX)?,
        )
        .map_err(crate::io_err("writing ROOT to a temp file"))?;
        let run = |request: String| {
            std::process::Command::new("debugfs")
                .args(["-R", &request])
                .arg(image.path())
                .output()
                .map_err(crate::io_err("running debugfs (Debian package e2fsprogs)"))
        };
        let stat = run(format!("stat {path}"))?;
        if !stat.status.success()
            || String::from_utf8_lossy(&stat.stderr).contains("File not found")
        {
            return Ok(None);
        }
        Ok(Some(run(format!("cat {path}"))?.stdout))
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

    /// Boots with `spec` until the guest ends the boot itself or `done()` holds (then QEMU is
    /// switched off; see [`boot_until`]), and records the outcome.
    pub fn run_until(
        &mut self,
        spec: &BootSpec,
        done: &mut dyn FnMut() -> bool,
    ) -> Result<&BootOutcome> {
        let outcome = boot_until(spec, done)?;
        self.boots.push(outcome);
        Ok(self.boots.last().expect("just pushed"))
    }

    /// The size of a USR slot of this machine's disk.
    pub fn usr_size(&self) -> Result<u64> {
        let disk = Disk::open(&self.disk, OpenMode::ReadOnly)?;
        Ok(disk.partition_byte_range(fastpatch_disk::USR_B_INDEX)?.1)
    }

    /// Writes `data` at the start of partition `index` of the image (QEMU must be stopped).
    pub fn write_partition(&self, index: u32, data: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let (offset, len) =
            Disk::open(&self.disk, OpenMode::ReadOnly)?.partition_byte_range(index)?;
        if data.len() as u64 > len {
            return Err(crate::HarnessError::Invalid(format!(
                "{} bytes do not fit partition {index} ({len} bytes)",
                data.len()
            )));
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.disk)
            .map_err(crate::io_err(format!("opening {}", self.disk.display())))?;
        f.write_all_at(data, offset)
            .and_then(|_| f.sync_all())
            .map_err(crate::io_err(format!(
                "writing partition {index} of {}",
                self.disk.display()
            )))
    }

    /// The bytes of partition `index`, read from the image (QEMU must be stopped).
    pub fn partition_bytes(&self, index: u32) -> Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let (offset, len) =
            Disk::open(&self.disk, OpenMode::ReadOnly)?.partition_byte_range(index)?;
        let mut f = std::fs::File::open(&self.disk)
            .map_err(crate::io_err(format!("opening {}", self.disk.display())))?;
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(crate::io_err(format!(
                "reading partition {index} of {}",
                self.disk.display()
            )))?;
        Ok(buf)
    }

    /// The slot attributes of partition `index`, read from the image (QEMU must be stopped).
    pub fn attrs(&self, index: u32) -> Result<SlotAttrs> {
        let disk = Disk::open(&self.disk, OpenMode::ReadOnly)?;
        Ok(disk.partition(index)?.attrs)
    }
}
