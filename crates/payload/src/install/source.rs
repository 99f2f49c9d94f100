//! Where a delta install reads from: the source image (the booted slot), opened read-only.
//! The whole source is checked against the delta's `old_partition_info` before the target
//! is touched; each operation's source bytes are checked again before they are used.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{IoContext, PayloadError, Result};
use crate::format::{PlannedOp, SourceImage};

/// A read-only byte range holding the image a delta applies to.
pub trait InstallSource: Send + Sync {
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Device path + range, for messages.
    fn identity(&self) -> String;
}

/// A byte range of a file or block device, opened read-only.
#[derive(Debug)]
pub struct SourceFile {
    file: File,
    path: PathBuf,
    base: u64,
    len: u64,
}

impl SourceFile {
    /// Opens `[base, base + len)` of `path` read-only; the range must lie inside the file.
    pub fn open(path: &Path, base: u64, len: u64) -> Result<SourceFile> {
        let mut file =
            File::open(path).ctx(|| format!("opening delta source {}", path.display()))?;
        let size = file
            .seek(SeekFrom::End(0))
            .ctx(|| format!("finding the size of {}", path.display()))?;
        if base.checked_add(len).is_none_or(|end| end > size) {
            return Err(PayloadError::Target(format!(
                "source range {base}+{len} lies beyond the end of {} ({size} bytes)",
                path.display()
            )));
        }
        Ok(SourceFile {
            file,
            path: path.to_path_buf(),
            base,
            len,
        })
    }

    /// The whole of a file or block device.
    pub fn whole(path: &Path) -> Result<SourceFile> {
        let size = File::open(path)
            .and_then(|mut f| f.seek(SeekFrom::End(0)))
            .ctx(|| format!("opening delta source {}", path.display()))?;
        SourceFile::open(path, 0, size)
    }
}

impl InstallSource for SourceFile {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => self.file.read_exact_at(buf, self.base + offset),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "read at {offset}+{} outside the {} byte source",
                    buf.len(),
                    self.len
                ),
            )),
        }
    }

    fn identity(&self) -> String {
        format!("{}@{}+{}", self.path.display(), self.base, self.len)
    }
}

/// Checks that `source` holds the image the delta was made against: at least `want.size`
/// bytes whose SHA-256 is `want.sha256`. Reads the source once; writes nothing.
pub fn check(source: &dyn InstallSource, want: &SourceImage) -> Result<()> {
    let from = want.version.as_deref().unwrap_or("an unnamed version");
    if source.size() < want.size {
        return Err(PayloadError::SourceMismatch {
            reason: format!(
                "{} holds {} bytes, the delta's source image ({from}) is {} bytes",
                source.identity(),
                source.size(),
                want.size
            ),
        });
    }
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < want.size {
        let n = (want.size - pos).min(buf.len() as u64) as usize;
        source
            .read_at(&mut buf[..n], pos)
            .ctx(|| format!("reading the delta source {} at {pos}", source.identity()))?;
        hash.update(&buf[..n]);
        pos += n as u64;
    }
    let got: [u8; 32] = hash.finalize().into();
    if got != want.sha256 {
        return Err(PayloadError::SourceMismatch {
            reason: format!(
                "SHA-256 of the first {} bytes of {} is {}, the delta's source ({from}) is {}",
                want.size,
                source.identity(),
                hex::encode(got),
                hex::encode(want.sha256)
            ),
        });
    }
    Ok(())
}

/// Reads an operation's source extents (at most `MAX_OP_SOURCE` bytes, which the plan
/// enforces) and checks them against the operation's source hash.
pub fn read_op_source(source: &dyn InstallSource, op: &PlannedOp) -> Result<Vec<u8>> {
    let mut data = vec![0u8; op.src_len() as usize];
    let mut at = 0usize;
    for &(off, len) in &op.src {
        let len = len as usize;
        source.read_at(&mut data[at..at + len], off).ctx(|| {
            format!(
                "operation {}: reading {len} source bytes at {off} of {}",
                op.index,
                source.identity()
            )
        })?;
        at += len;
    }
    let got: [u8; 32] = Sha256::digest(&data).into();
    if Some(got) != op.src_sha256 {
        return Err(PayloadError::SourceHashMismatch { index: op.index });
    }
    Ok(data)
}
