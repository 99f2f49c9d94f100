//! The part every generator shares: operation data collected in a temporary file, then the
//! header, manifest, data and signature block written to a temporary file next to the
//! output, synced, and renamed into place (a crash leaves no half-written payload).

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use rsa::RsaPrivateKey;
use sha2::{Digest, Sha256};

use crate::error::{IoContext, PayloadError, Result};
use crate::format::{encode_header, BLOCK_SIZE, HOLE};
use crate::proto::{DeltaArchiveManifest, Extent, InstallOperation, OpType};
use crate::signing;

/// Operation data, appended in payload order.
pub(crate) struct Blobs {
    file: BufWriter<File>,
    len: u64,
    dir: PathBuf,
}

impl Blobs {
    /// A temporary data file in the output's directory.
    pub fn new(out: &Path) -> Result<Blobs> {
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let file = tempfile::tempfile_in(&dir)
            .ctx(|| format!("creating a temporary file in {}", dir.display()))?;
        Ok(Blobs {
            file: BufWriter::new(file),
            len: 0,
            dir,
        })
    }

    /// Appends one operation's data; returns its offset (relative to the end of the manifest).
    pub fn push(&mut self, data: &[u8]) -> Result<u64> {
        let at = self.len;
        self.file
            .write_all(data)
            .ctx(|| "writing operation data".into())?;
        self.len += data.len() as u64;
        Ok(at)
    }

    pub fn len(&self) -> u64 {
        self.len
    }
}

/// Writes `manifest` (given its signature fields here) with the data in `blobs` to `out`,
/// signed with every key in `keys` (none: unsigned). Returns the payload's length and SHA-256.
/// With `smaller_than`, a payload that would not be smaller is not written
/// ([`PayloadError::DeltaNotSmaller`]).
pub(crate) fn write_payload(
    manifest: &mut DeltaArchiveManifest,
    blobs: Blobs,
    keys: &[RsaPrivateKey],
    out: &Path,
    smaller_than: Option<u64>,
) -> Result<(u64, [u8; 32])> {
    let data_pos = blobs.len;
    if !keys.is_empty() {
        let sig_len = signing::signatures_len(keys);
        manifest.signatures_offset = Some(data_pos);
        manifest.signatures_size = Some(sig_len);
        // Older clients expect the signature blob to be covered by a no-op write to a hole.
        manifest.noop_operations.push(InstallOperation {
            r#type: OpType::Replace as i32,
            data_offset: Some(data_pos),
            data_length: Some(sig_len),
            dst_extents: vec![Extent {
                start_block: Some(HOLE),
                num_blocks: Some(sig_len.div_ceil(BLOCK_SIZE)),
            }],
            ..Default::default()
        });
    }
    let manifest_bytes = manifest.encode_to_vec();
    let header = encode_header(manifest_bytes.len() as u64);
    let planned_len = header.len() as u64
        + manifest_bytes.len() as u64
        + data_pos
        + manifest.signatures_size.unwrap_or(0);
    if let Some(full) = smaller_than.filter(|full| planned_len >= *full) {
        return Err(PayloadError::DeltaNotSmaller {
            delta: planned_len,
            full,
        });
    }
    let dir = blobs.dir;
    let mut data = blobs.file.into_inner().map_err(|e| PayloadError::Io {
        context: "flushing operation data".into(),
        error: e.into_error(),
    })?;
    data.seek(SeekFrom::Start(0))
        .ctx(|| "rewinding operation data".into())?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .ctx(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut payload_hash = Sha256::new();
    let mut signed_hash = Sha256::new();
    {
        let mut w = HashingWriter {
            inner: BufWriter::new(tmp.as_file_mut()),
            hashes: [&mut payload_hash, &mut signed_hash],
        };
        w.write_all(&header)
            .and_then(|_| w.write_all(&manifest_bytes))
            .ctx(|| "writing the manifest".into())?;
        io::copy(&mut data, &mut w).ctx(|| "writing operation data".into())?;
        w.inner.flush().ctx(|| "writing the payload".into())?;
    }
    let mut payload_len = header.len() as u64 + manifest_bytes.len() as u64 + data_pos;
    if !keys.is_empty() {
        let digest: [u8; 32] = signed_hash.finalize().into();
        let sigs = signing::sign(&digest, keys)?;
        if Some(sigs.len() as u64) != manifest.signatures_size {
            return Err(PayloadError::Sign(
                "signature block size differs from the size announced in the manifest".into(),
            ));
        }
        tmp.as_file_mut()
            .write_all(&sigs)
            .ctx(|| "writing signatures".into())?;
        payload_hash.update(&sigs);
        payload_len += sigs.len() as u64;
    }
    tmp.as_file()
        .sync_all()
        .ctx(|| "syncing the payload".into())?;
    tmp.persist(out).map_err(|e| PayloadError::Io {
        context: format!("moving the payload to {}", out.display()),
        error: e.error,
    })?;
    Ok((payload_len, payload_hash.finalize().into()))
}

/// Runs `f` on every item on its own scoped thread; results in item order.
pub(crate) fn par_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Vec<Result<R>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|item| s.spawn(|| f(item))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(PayloadError::Sign("a worker thread panicked".into())))
            })
            .collect()
    })
}

/// Worker threads for generation: every core, at most 8.
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
}

struct HashingWriter<'a, W: Write> {
    inner: W,
    hashes: [&'a mut Sha256; 2],
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        for h in self.hashes.iter_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
