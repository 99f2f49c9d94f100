//! Sector-addressed access to an image file or a block device.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{DiskError, Result};

/// How a disk is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    ReadOnly,
    ReadWrite,
}

pub(crate) struct Device {
    file: File,
    pub(crate) path: PathBuf,
    pub(crate) len: u64,
    pub(crate) is_block: bool,
}

const BLKSSZGET: libc::c_ulong = 0x1268;

impl Device {
    pub(crate) fn open(path: &Path, mode: OpenMode) -> Result<Device> {
        let open_err = |source| DiskError::Open {
            path: path.to_path_buf(),
            error: source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        let is_block = meta.file_type().is_block_device();
        if mode == OpenMode::ReadWrite && !is_block && meta.permissions().mode() & 0o222 == 0 {
            // Root may write anyway; a file nobody may write is a deliberate "hands off".
            return Err(DiskError::ReadOnly {
                path: path.to_path_buf(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(mode == OpenMode::ReadWrite)
            .open(path)
            .map_err(|source| {
                let denied = source.raw_os_error() == Some(libc::EROFS)
                    || source.kind() == std::io::ErrorKind::PermissionDenied;
                if denied && mode == OpenMode::ReadWrite {
                    return DiskError::ReadOnly {
                        path: path.to_path_buf(),
                    };
                }
                open_err(source)
            })?;
        // Seeking to the end gives the size of block devices too (metadata says 0 for them).
        let len = {
            use std::io::{Seek, SeekFrom};
            let mut f = &file;
            f.seek(SeekFrom::End(0)).map_err(|source| DiskError::Io {
                path: path.to_path_buf(),
                op: "size query",
                error: source,
            })?
        };
        Ok(Device {
            file,
            path: path.to_path_buf(),
            len,
            is_block,
        })
    }

    /// The logical sector size the kernel reports for a block device.
    pub(crate) fn block_sector_size(&self) -> Option<u64> {
        if !self.is_block {
            return None;
        }
        let mut size: libc::c_int = 0;
        use std::os::fd::AsRawFd;
        // SAFETY: BLKSSZGET writes one c_int through the pointer we pass; the fd is open.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKSSZGET as _, &mut size) };
        (rc == 0 && size > 0).then_some(size as u64)
    }

    pub(crate) fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| DiskError::Io {
                path: self.path.clone(),
                op: "read",
                error: source,
            })?;
        Ok(buf)
    }

    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        #[cfg(feature = "failpoints")]
        let data = {
            let allowed = crate::power::take(data.len());
            if allowed < data.len() {
                // The power goes off inside this write: only its first bytes land.
                let _ = self.file.write_all_at(&data[..allowed], offset);
                return Err(DiskError::InjectedCut {
                    path: self.path.clone(),
                    point: "power cut inside a table write",
                });
            }
            data
        };
        self.file
            .write_all_at(data, offset)
            .map_err(|source| DiskError::Io {
                path: self.path.clone(),
                op: "write",
                error: source,
            })
    }

    /// A durability point: everything written so far is on stable storage after this.
    pub(crate) fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|source| DiskError::Io {
            path: self.path.clone(),
            op: "sync",
            error: source,
        })
    }
}
