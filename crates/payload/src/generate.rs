//! Full-payload generation: the image is cut into 1 MiB chunks, each stored as the smallest
//! of raw and compressed (bzip2 for Flatcar compatibility, zstd by default), followed by the
//! signature block.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use prost::Message;
use rsa::RsaPrivateKey;
use sha2::{Digest, Sha256};

use crate::error::{IoContext, PayloadError, Result};
use crate::format::{encode_header, BLOCK_SIZE, HOLE};
use crate::proto::{DeltaArchiveManifest, Extent, InstallOperation, OpType, PartitionInfo};
use crate::signing;

pub const CHUNK_SIZE: u64 = 1 << 20;

/// How chunks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Compression {
    /// REPLACE_BZ (1) when smaller: what Flatcar's generator does.
    Bz2,
    /// REPLACE_ZSTD (14) when smaller: fastpatch's default, far faster to install.
    Zstd,
    /// REPLACE (0) only.
    None,
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub compression: Compression,
    /// Emit only what stock Flatcar update_engine accepts (REPLACE / REPLACE_BZ, data
    /// offsets below 4 GiB); zstd is refused in this mode.
    pub flatcar_compatible: bool,
    pub zstd_level: i32,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            compression: Compression::Zstd,
            flatcar_compatible: false,
            zstd_level: 9,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerateReport {
    pub image_size: u64,
    pub payload_len: u64,
    pub operations: usize,
    pub compressed_operations: usize,
    #[serde(with = "hex::serde")]
    pub image_sha256: [u8; 32],
    #[serde(with = "hex::serde")]
    pub payload_sha256: [u8; 32],
}

/// A chunk's compressed form, if smaller than the chunk.
type Packed = Option<(OpType, Vec<u8>)>;

fn compress(chunk: &[u8], opts: &GenerateOptions) -> Result<Packed> {
    let out = match opts.compression {
        Compression::None => return Ok(None),
        Compression::Bz2 => {
            let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
            enc.write_all(chunk)
                .and_then(|_| enc.finish())
                .ctx(|| "bzip2 compression".into())?
        }
        Compression::Zstd => {
            zstd::bulk::compress(chunk, opts.zstd_level).ctx(|| "zstd compression".into())?
        }
    };
    let kind = if opts.compression == Compression::Bz2 {
        OpType::ReplaceBz
    } else {
        OpType::ReplaceZstd
    };
    Ok((out.len() < chunk.len()).then_some((kind, out)))
}

/// Writes a payload for `image` to `out`, signed with every key in `keys` (an empty list
/// makes an unsigned payload, which installers refuse; useful only for tests).
pub fn generate(
    image: &Path,
    keys: &[RsaPrivateKey],
    out: &Path,
    opts: &GenerateOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<GenerateReport> {
    if opts.flatcar_compatible && opts.compression == Compression::Zstd {
        return Err(PayloadError::InvalidManifest(
            "--flatcar-compatible payloads cannot use zstd (use bz2 or none)".into(),
        ));
    }
    let mut img = File::open(image).ctx(|| format!("opening image {}", image.display()))?;
    let image_size = img
        .seek(SeekFrom::End(0))
        .ctx(|| format!("sizing {}", image.display()))?;
    img.seek(SeekFrom::Start(0))
        .ctx(|| "rewinding the image".into())?;
    if image_size == 0 {
        return Err(PayloadError::InvalidManifest("image is empty".into()));
    }
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut blobs = BufWriter::new(
        tempfile::tempfile_in(dir)
            .ctx(|| format!("creating a temporary file in {}", dir.display()))?,
    );
    let mut image_hash = Sha256::new();
    let mut ops = Vec::new();
    let mut data_pos = 0u64;
    let mut compressed_ops = 0;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let mut done = 0u64;
    while done < image_size {
        // Read a batch of chunks, compress them in parallel, store them in order.
        let mut batch = Vec::with_capacity(threads);
        while batch.len() < threads && done < image_size {
            let len = CHUNK_SIZE.min(image_size - done) as usize;
            let mut chunk = vec![0u8; len];
            img.read_exact(&mut chunk)
                .ctx(|| format!("reading the image at {done}"))?;
            image_hash.update(&chunk);
            batch.push((done, chunk));
            done += len as u64;
        }
        let compressed: Vec<Result<Packed>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|(_, c)| s.spawn(|| compress(c, opts)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(PayloadError::Sign("compression thread panicked".into()))
                    })
                })
                .collect()
        });
        for ((start, chunk), packed) in batch.iter().zip(compressed) {
            let (kind, data) = match packed? {
                Some((kind, data)) => {
                    compressed_ops += 1;
                    (kind, data)
                }
                None => (OpType::Replace, chunk.clone()),
            };
            blobs
                .write_all(&data)
                .ctx(|| "writing operation data".into())?;
            ops.push(InstallOperation {
                r#type: kind as i32,
                data_offset: Some(data_pos),
                data_length: Some(data.len() as u64),
                dst_extents: vec![Extent {
                    start_block: Some(start / BLOCK_SIZE),
                    num_blocks: Some((chunk.len() as u64).div_ceil(BLOCK_SIZE)),
                }],
                data_sha256_hash: Some(Sha256::digest(&data).to_vec()),
                ..Default::default()
            });
            data_pos += data.len() as u64;
        }
        progress(done, image_size);
    }
    if opts.flatcar_compatible && data_pos > u64::from(u32::MAX) {
        return Err(PayloadError::InvalidManifest(
            "payload data exceeds 4 GiB, which Flatcar clients cannot address".into(),
        ));
    }
    let image_sha256: [u8; 32] = image_hash.finalize().into();
    let mut manifest = DeltaArchiveManifest {
        partition_operations: ops,
        block_size: Some(BLOCK_SIZE as u32),
        new_partition_info: Some(PartitionInfo {
            size: Some(image_size),
            hash: Some(image_sha256.to_vec()),
        }),
        ..Default::default()
    };
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

    let mut blobs = blobs.into_inner().map_err(|e| PayloadError::Io {
        context: "flushing operation data".into(),
        error: e.into_error(),
    })?;
    blobs
        .seek(SeekFrom::Start(0))
        .ctx(|| "rewinding operation data".into())?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
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
        io::copy(&mut blobs, &mut w).ctx(|| "writing operation data".into())?;
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
    Ok(GenerateReport {
        image_size,
        payload_len,
        operations: manifest.partition_operations.len(),
        compressed_operations: compressed_ops,
        image_sha256,
        payload_sha256: payload_hash.finalize().into(),
    })
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
