//! Delta payloads: the new image described against the old one (the slot the machine runs).
//!
//! Every 4 KiB block of the new image becomes one of: ZERO (all zeros), SOURCE_COPY (the
//! same bytes exist somewhere in the source), or part of a group of changed blocks, which
//! is stored as the smallest of SOURCE_ZSTD (zstd with the source windows that hold its old
//! version as reference prefix), REPLACE_ZSTD and REPLACE. The manifest names the source
//! by `old_partition_info` (size and SHA-256), which the installer checks before it writes.
//! A delta is never kept when it is not smaller than the full payload would be.

mod encode;
mod index;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;

use rsa::RsaPrivateKey;
use sha2::{Digest, Sha256};

use crate::assemble::{self, Blobs};
use crate::error::{IoContext, PayloadError, Result};
use crate::format::BLOCK_SIZE;
use crate::proto::{DeltaArchiveManifest, Extent, InstallOperation, OpType, PartitionInfo};
use index::{is_zero, read_padded, SourceIndex};

/// update_engine's minor version for deltas whose operations carry source hashes.
pub const DELTA_MINOR_VERSION: u32 = 3;
/// Changed blocks per group (one operation): 1 MiB.
const GROUP_BLOCKS: usize = 256;
/// Longest SOURCE_COPY operation, in blocks (4 MiB).
const COPY_BLOCKS: u64 = 1024;

#[derive(Debug, Clone)]
pub struct DeltaOptions {
    pub zstd_level: i32,
    /// Recorded in the manifest as the source's version.
    pub source_version: Option<String>,
    /// The full payload's length: a delta that is not smaller is not written
    /// ([`PayloadError::DeltaNotSmaller`]); the full payload is the one to serve.
    pub smaller_than: Option<u64>,
}

impl Default for DeltaOptions {
    fn default() -> Self {
        DeltaOptions {
            zstd_level: 19,
            source_version: None,
            smaller_than: None,
        }
    }
}

/// Which pass a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the source image.
    IndexSource,
    /// Reading the new image, matching blocks.
    MatchBlocks,
    /// Compressing the changed blocks.
    Encode,
}

impl Stage {
    pub fn label(self) -> &'static str {
        match self {
            Stage::IndexSource => "indexing source",
            Stage::MatchBlocks => "matching blocks",
            Stage::Encode => "encoding changes",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeltaReport {
    pub image_size: u64,
    pub source_size: u64,
    pub payload_len: u64,
    pub operations: usize,
    /// Bytes of the new image by how they are made.
    pub zero_bytes: u64,
    pub copied_bytes: u64,
    pub changed_bytes: u64,
    /// Changed groups stored as SOURCE_ZSTD (the rest as REPLACE_ZSTD / REPLACE).
    pub patched_groups: usize,
    pub changed_groups: usize,
    #[serde(with = "hex::serde")]
    pub image_sha256: [u8; 32],
    #[serde(with = "hex::serde")]
    pub source_sha256: [u8; 32],
    #[serde(with = "hex::serde")]
    pub payload_sha256: [u8; 32],
}

/// How one block of the new image is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Zero,
    Copy(u64),
    Changed,
}

/// Writes a delta payload that turns `source` into `image` to `out`, signed with `keys`.
pub fn generate_delta(
    source: &Path,
    image: &Path,
    keys: &[RsaPrivateKey],
    out: &Path,
    opts: &DeltaOptions,
    progress: &mut dyn FnMut(Stage, u64, u64),
) -> Result<DeltaReport> {
    let (src_file, source_size) = open_image(source, "source")?;
    let (new_file, image_size) = open_image(image, "image")?;
    let index = SourceIndex::build(src_file, source_size, &mut |d, t| {
        progress(Stage::IndexSource, d, t)
    })?;
    let (blocks, image_sha256) = classify(&index, &new_file, image_size, &mut |d, t| {
        progress(Stage::MatchBlocks, d, t)
    })?;
    let source_sha256 = index.sha256;
    let mut blobs = Blobs::new(out)?;
    let mut ops = Vec::new();
    let mut report = DeltaReport {
        image_size,
        source_size,
        payload_len: 0,
        operations: 0,
        zero_bytes: 0,
        copied_bytes: 0,
        changed_bytes: 0,
        patched_groups: 0,
        changed_groups: 0,
        image_sha256,
        source_sha256,
        payload_sha256: [0; 32],
    };
    plain_ops(&blocks, &mut ops, &mut report);
    hash_copy_sources(&index, &mut ops)?;
    let groups = changed_groups(&blocks);
    report.changed_groups = groups.len();
    let total_changed: u64 = groups.iter().map(|g| extents_len(g)).sum();
    report.changed_bytes = total_changed;
    let mut done = 0u64;
    for batch in groups.chunks(assemble::threads()) {
        let encoded = assemble::par_map(batch, |group| {
            let data = read_extents(&new_file, group, image_size)?;
            encode::encode(&index, &data, opts.zstd_level)
        });
        for (group, enc) in batch.iter().zip(encoded) {
            let enc = enc?;
            if enc.kind == OpType::SourceZstd {
                report.patched_groups += 1;
            }
            let offset = blobs.push(&enc.data)?;
            ops.push(InstallOperation {
                r#type: enc.kind as i32,
                data_offset: Some(offset),
                data_length: Some(enc.data.len() as u64),
                src_extents: enc.src.iter().map(|&(o, l)| extent(o, l)).collect(),
                dst_extents: group.iter().map(|&(o, l)| extent(o, l)).collect(),
                data_sha256_hash: Some(Sha256::digest(&enc.data).to_vec()),
                src_sha256_hash: enc.src_sha256.map(|h| h.to_vec()),
                ..Default::default()
            });
            done += extents_len(group);
        }
        progress(Stage::Encode, done, total_changed);
    }
    let mut manifest = DeltaArchiveManifest {
        partition_operations: ops,
        block_size: Some(BLOCK_SIZE as u32),
        old_partition_info: Some(PartitionInfo {
            size: Some(source_size),
            hash: Some(source_sha256.to_vec()),
        }),
        new_partition_info: Some(PartitionInfo {
            size: Some(image_size),
            hash: Some(image_sha256.to_vec()),
        }),
        minor_version: Some(DELTA_MINOR_VERSION),
        old_image_version: opts.source_version.clone(),
        ..Default::default()
    };
    report.operations = manifest.partition_operations.len();
    let (len, sha) = assemble::write_payload(&mut manifest, blobs, keys, out, opts.smaller_than)?;
    report.payload_len = len;
    report.payload_sha256 = sha;
    Ok(report)
}

/// Opens an image and returns it with its size, which must be a whole number of blocks.
fn open_image(path: &Path, what: &str) -> Result<(File, u64)> {
    let mut f = File::open(path).ctx(|| format!("opening {what} image {}", path.display()))?;
    let size = f
        .seek(SeekFrom::End(0))
        .ctx(|| format!("sizing {}", path.display()))?;
    if size == 0 || size % BLOCK_SIZE != 0 {
        return Err(PayloadError::InvalidManifest(format!(
            "{what} image {} is {size} bytes; a delta needs a non-empty image of whole {BLOCK_SIZE}-byte blocks",
            path.display()
        )));
    }
    Ok((f, size))
}

/// Classifies every block of the new image and hashes the image.
fn classify(
    index: &SourceIndex,
    new: &File,
    size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Vec<Block>, [u8; 32])> {
    let mut blocks = Vec::with_capacity((size / BLOCK_SIZE) as usize);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0u64;
    let mut hint = None;
    while pos < size {
        let n = read_padded(new, &mut buf, pos, size)?;
        hash.update(&buf[..n]);
        for block in buf[..n].chunks(BLOCK_SIZE as usize) {
            let kind = if is_zero(block) {
                Block::Zero
            } else {
                match index.find_block(block, hint)? {
                    Some(at) => Block::Copy(at),
                    None => Block::Changed,
                }
            };
            hint = match kind {
                Block::Copy(at) => Some(at + 1),
                _ => None,
            };
            blocks.push(kind);
        }
        pos += n as u64;
        progress(pos, size);
    }
    Ok((blocks, hash.finalize().into()))
}

/// ZERO and SOURCE_COPY operations for the runs of zero and copied blocks.
fn plain_ops(blocks: &[Block], ops: &mut Vec<InstallOperation>, report: &mut DeltaReport) {
    let mut i = 0usize;
    while i < blocks.len() {
        match blocks[i] {
            Block::Changed => i += 1,
            Block::Zero => {
                let start = i;
                while i < blocks.len() && blocks[i] == Block::Zero {
                    i += 1;
                }
                let len = (i - start) as u64 * BLOCK_SIZE;
                report.zero_bytes += len;
                ops.push(InstallOperation {
                    r#type: OpType::Zero as i32,
                    dst_extents: vec![extent(start as u64 * BLOCK_SIZE, len)],
                    ..Default::default()
                });
            }
            Block::Copy(_) => {
                let start = i;
                let mut src: Vec<(u64, u64)> = Vec::new();
                while i < blocks.len() && (i - start) < COPY_BLOCKS as usize {
                    let Block::Copy(at) = blocks[i] else { break };
                    push_range(&mut src, at * BLOCK_SIZE, BLOCK_SIZE);
                    i += 1;
                }
                let len = (i - start) as u64 * BLOCK_SIZE;
                report.copied_bytes += len;
                ops.push(InstallOperation {
                    r#type: OpType::SourceCopy as i32,
                    src_extents: src.iter().map(|&(o, l)| extent(o, l)).collect(),
                    dst_extents: vec![extent(start as u64 * BLOCK_SIZE, len)],
                    // Filled in below from the source bytes.
                    src_sha256_hash: None,
                    ..Default::default()
                });
            }
        }
    }
}

/// Fills in each SOURCE_COPY's source hash from the source bytes it reads.
fn hash_copy_sources(index: &SourceIndex, ops: &mut [InstallOperation]) -> Result<()> {
    let mut buf = Vec::new();
    for op in ops
        .iter_mut()
        .filter(|op| op.r#type == OpType::SourceCopy as i32)
    {
        let mut hash = Sha256::new();
        for e in &op.src_extents {
            let (off, len) = (
                e.start_block.unwrap_or(0) * BLOCK_SIZE,
                e.num_blocks.unwrap_or(0) * BLOCK_SIZE,
            );
            buf.resize(len as usize, 0);
            index.read(&mut buf, off)?;
            hash.update(&buf);
        }
        op.src_sha256_hash = Some(hash.finalize().to_vec());
    }
    Ok(())
}

/// The changed blocks, in order, cut into groups of `GROUP_BLOCKS` (as byte extents).
fn changed_groups(blocks: &[Block]) -> Vec<Vec<(u64, u64)>> {
    let mut groups = Vec::new();
    let mut cur: Vec<(u64, u64)> = Vec::new();
    let mut count = 0;
    for (i, b) in blocks.iter().enumerate() {
        if *b != Block::Changed {
            continue;
        }
        push_range(&mut cur, i as u64 * BLOCK_SIZE, BLOCK_SIZE);
        count += 1;
        if count == GROUP_BLOCKS {
            groups.push(std::mem::take(&mut cur));
            count = 0;
        }
    }
    if !cur.is_empty() {
        groups.push(cur);
    }
    groups
}

/// Appends a byte range, joining it to the last one when they touch.
fn push_range(v: &mut Vec<(u64, u64)>, off: u64, len: u64) {
    match v.last_mut() {
        Some(last) if last.0 + last.1 == off => last.1 += len,
        _ => v.push((off, len)),
    }
}

fn extents_len(e: &[(u64, u64)]) -> u64 {
    e.iter().map(|x| x.1).sum()
}

fn extent(off: u64, len: u64) -> Extent {
    Extent {
        start_block: Some(off / BLOCK_SIZE),
        num_blocks: Some(len / BLOCK_SIZE),
    }
}

fn read_extents(file: &File, extents: &[(u64, u64)], size: u64) -> Result<Vec<u8>> {
    let mut data = vec![0u8; extents_len(extents) as usize];
    let mut at = 0usize;
    for &(off, len) in extents {
        let len = len as usize;
        read_padded(file, &mut data[at..at + len], off, size)?;
        at += len;
    }
    Ok(data)
}
