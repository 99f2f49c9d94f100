//! Full-payload generation: the image is cut into 1 MiB chunks, each stored as the smallest
//! of raw and compressed (bzip2 for Flatcar compatibility, zstd by default), followed by the
//! signature block.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use rsa::RsaPrivateKey;
use sha2::{Digest, Sha256};

use crate::assemble;
use crate::error::{IoContext, PayloadError, Result};
use crate::format::BLOCK_SIZE;
use crate::proto::{DeltaArchiveManifest, Extent, InstallOperation, OpType, PartitionInfo};

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
    let mut blobs = assemble::Blobs::new(out)?;
    let mut image_hash = Sha256::new();
    let mut ops = Vec::new();
    let mut compressed_ops = 0;
    let threads = assemble::threads();
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
        let compressed = assemble::par_map(&batch, |(_, c)| compress(c, opts));
        for ((start, chunk), packed) in batch.iter().zip(compressed) {
            let (kind, data) = match packed? {
                Some((kind, data)) => {
                    compressed_ops += 1;
                    (kind, data)
                }
                None => (OpType::Replace, chunk.clone()),
            };
            let data_offset = blobs.push(&data)?;
            ops.push(InstallOperation {
                r#type: kind as i32,
                data_offset: Some(data_offset),
                data_length: Some(data.len() as u64),
                dst_extents: vec![Extent {
                    start_block: Some(start / BLOCK_SIZE),
                    num_blocks: Some((chunk.len() as u64).div_ceil(BLOCK_SIZE)),
                }],
                data_sha256_hash: Some(Sha256::digest(&data).to_vec()),
                ..Default::default()
            });
        }
        progress(done, image_size);
    }
    if opts.flatcar_compatible && blobs.len() > u64::from(u32::MAX) {
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
    let (payload_len, payload_sha256) =
        assemble::write_payload(&mut manifest, blobs, keys, out, None)?;
    Ok(GenerateReport {
        image_size,
        payload_len,
        operations: manifest.partition_operations.len(),
        compressed_operations: compressed_ops,
        image_sha256,
        payload_sha256,
    })
}
