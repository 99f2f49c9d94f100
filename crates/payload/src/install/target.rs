//! Where an install writes: a byte range of a file or block device, behind a trait so tests
//! can inject write errors and the engine can hand in a slot chosen by boot control.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use fastpatch_boot_control::{BootControl, Slot};
use fastpatch_disk::{Disk, OpenMode};

use crate::error::{IoContext, PayloadError, Result};

/// A writable byte range (the passive slot). Offsets are relative to the start of the range.
/// Methods take `&self` so the writer and the read-back verifier can share one target.
pub trait InstallTarget: Send + Sync {
    /// Length of the range in bytes.
    fn size(&self) -> u64;
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (fsync / fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// A stable identity (device path + range) recorded in the resume state, so progress is
    /// never resumed onto a different target.
    fn identity(&self) -> String;
    /// Hint: start writing back `[offset, offset + len)` now, without waiting, so the final
    /// `sync` has little left to do. Errors surface at `sync`.
    fn start_writeback(&self, _offset: u64, _len: u64) {}
}

/// A byte range of a regular file or block device.
#[derive(Debug)]
pub struct FileRange {
    file: File,
    path: PathBuf,
    base: u64,
    len: u64,
}

impl FileRange {
    /// Opens `[base, base + len)` of `path` for writing; the range must lie inside the file.
    pub fn open(path: &Path, base: u64, len: u64) -> Result<FileRange> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .ctx(|| format!("opening install target {}", path.display()))?;
        // Block devices report size 0 in metadata; seeking to the end works for both.
        let size = file
            .seek(SeekFrom::End(0))
            .ctx(|| format!("finding the size of {}", path.display()))?;
        let end = base
            .checked_add(len)
            .ok_or_else(|| PayloadError::Target("range overflows".into()))?;
        if end > size {
            return Err(PayloadError::Target(format!(
                "range {base}..{end} lies beyond the end of {} ({size} bytes)",
                path.display()
            )));
        }
        Ok(FileRange {
            file,
            path: path.to_path_buf(),
            base,
            len,
        })
    }

    /// The whole of a file or block device.
    pub fn whole(path: &Path) -> Result<FileRange> {
        let size = {
            let mut f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
            f.seek(SeekFrom::End(0))
                .ctx(|| format!("sizing {}", path.display()))?
        };
        FileRange::open(path, 0, size)
    }

    /// Partition `index` (1-based) of the GPT disk at `disk_path`, for the CLI. Refuses the
    /// partition the running system booted from (per /proc/cmdline), when it can tell.
    pub fn partition(disk_path: &Path, index: u32) -> Result<FileRange> {
        let disk = Disk::open(disk_path, OpenMode::ReadOnly)?;
        let part = disk.partition(index)?;
        if let Ok(cmdline) = std::fs::read_to_string("/proc/cmdline") {
            if let Some(fastpatch_boot_control::UsrSpec::PartUuid(booted)) =
                fastpatch_boot_control::booted_partuuid_from_cmdline(&cmdline)
            {
                if booted == part.unique_guid {
                    return Err(PayloadError::Target(format!(
                        "partition {index} ({booted}) is the booted USR partition; it is never written while running"
                    )));
                }
            }
        }
        let (offset, len) = disk.partition_byte_range(index)?;
        drop(disk);
        FileRange::open(disk_path, offset, len)
    }

    /// The slot `slot` on the disk managed by `boot`, after `check_writable` (which refuses
    /// the booted slot and the only known-good fallback).
    pub fn slot(disk_path: &Path, boot: &dyn BootControl, slot: Slot) -> Result<FileRange> {
        let state = boot.check_writable(slot)?;
        FileRange::open(disk_path, state.byte_offset, state.byte_len)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    fn check(&self, offset: u64, n: usize) -> io::Result<u64> {
        match offset.checked_add(n as u64) {
            Some(end) if end <= self.len => Ok(self.base + offset),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "access at {offset}+{n} outside the {} byte target",
                    self.len
                ),
            )),
        }
    }
}

impl InstallTarget for FileRange {
    fn size(&self) -> u64 {
        self.len
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let at = self.check(offset, buf.len())?;
        self.file.write_all_at(buf, at)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = self.check(offset, buf.len())?;
        self.file.read_exact_at(buf, at)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        if let Ok(at) = self.check(offset, len as usize) {
            // SAFETY: a plain syscall on a file descriptor we own; no memory is passed.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    at as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
    }

    fn identity(&self) -> String {
        let path = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        format!("{}@{}+{}", path.display(), self.base, self.len)
    }
}
