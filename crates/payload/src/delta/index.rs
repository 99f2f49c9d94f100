//! What the generator knows of the source image: every 4 KiB block by content (for
//! SOURCE_COPY) and content-defined anchors (to find where a changed region's old version
//! lies, for SOURCE_ZSTD). Built in one pass over the source; a few bytes per block.

use std::collections::HashMap;
use std::fs::File;
use std::hash::Hasher;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result};
use crate::format::BLOCK_SIZE;

const BLOCK: usize = BLOCK_SIZE as usize;
/// Read size of the scans.
const SCAN: usize = 4 << 20;

/// Gear rolling hash: each byte shifts the value left and adds the byte's random constant,
/// so the value depends on the last 64 bytes only. An anchor is a position where the top 8
/// bits are zero (one in 256 positions, decided by content, so anchors survive shifts).
const GEAR: [u64; 256] = gear_table();
const ANCHOR_BITS: u64 = 0xff << 56;

const fn gear_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut i = 0;
    while i < 256 {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
}

/// Calls `found(position_after_anchor, gear_value)` for every anchor in `data`, continuing
/// the rolling state `h` (start a new stream with 0).
pub(crate) fn anchors(h: &mut u64, data: &[u8], mut found: impl FnMut(usize, u64)) {
    for (i, &b) in data.iter().enumerate() {
        *h = (*h << 1).wrapping_add(GEAR[b as usize]);
        if *h & ANCHOR_BITS == 0 {
            found(i + 1, *h);
        }
    }
}

pub(crate) fn block_hash(block: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(block);
    h.finish()
}

pub(crate) fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

pub(crate) struct SourceIndex {
    pub file: File,
    pub size: u64,
    pub sha256: [u8; 32],
    /// Block content hash → the first source block with that content (zero blocks left out).
    blocks: HashMap<u64, u64>,
    /// Anchor value → the first source offset just past it.
    anchors: HashMap<u64, u64>,
}

impl SourceIndex {
    /// Reads the source once. `progress(done, total)` in bytes.
    pub fn build(file: File, size: u64, progress: &mut dyn FnMut(u64, u64)) -> Result<SourceIndex> {
        let mut blocks = HashMap::with_capacity((size / BLOCK_SIZE) as usize);
        let mut anchor_map = HashMap::with_capacity((size / 256) as usize);
        let mut buf = vec![0u8; SCAN];
        let mut h = 0u64;
        let mut pos = 0u64;
        let mut sha = Sha256::new();
        while pos < size {
            let n = read_padded(&file, &mut buf, pos, size)?;
            sha.update(&buf[..n]);
            for (i, block) in buf[..n].chunks(BLOCK).enumerate() {
                if !is_zero(block) {
                    blocks
                        .entry(block_hash(block))
                        .or_insert(pos / BLOCK_SIZE + i as u64);
                }
            }
            anchors(&mut h, &buf[..n], |at, value| {
                anchor_map.entry(value).or_insert(pos + at as u64);
            });
            pos += n as u64;
            progress(pos.min(size), size);
        }
        Ok(SourceIndex {
            file,
            size,
            sha256: sha.finalize().into(),
            blocks,
            anchors: anchor_map,
        })
    }

    /// A source block with exactly `block`'s bytes, preferring `hint` (the block after the
    /// previous match, which keeps copies contiguous).
    pub fn find_block(&self, block: &[u8], hint: Option<u64>) -> Result<Option<u64>> {
        let mut theirs = vec![0u8; BLOCK];
        if let Some(h) = hint.filter(|h| (h + 1) * BLOCK_SIZE <= self.padded_len()) {
            read_padded(&self.file, &mut theirs, h * BLOCK_SIZE, self.size)?;
            if theirs == block {
                return Ok(Some(h));
            }
        }
        let Some(&at) = self.blocks.get(&block_hash(block)) else {
            return Ok(None);
        };
        read_padded(&self.file, &mut theirs, at * BLOCK_SIZE, self.size)?;
        Ok((theirs == block).then_some(at))
    }

    /// Source offsets of the anchors that `data` shares with the source.
    pub fn matches(&self, data: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        let mut h = 0u64;
        anchors(&mut h, data, |_, value| {
            if let Some(&at) = self.anchors.get(&value) {
                out.push(at);
            }
        });
        out
    }

    /// The source's length rounded up to whole blocks (the last block reads as zero-padded).
    pub fn padded_len(&self) -> u64 {
        self.size.div_ceil(BLOCK_SIZE) * BLOCK_SIZE
    }

    /// Reads `[off, off + buf.len())`, zero beyond the source's end.
    pub fn read(&self, buf: &mut [u8], off: u64) -> Result<()> {
        read_padded(&self.file, buf, off, self.size).map(|_| ())
    }
}

/// Reads up to `buf.len()` bytes (a whole number of blocks) at `pos` of a file of `size`
/// bytes; a last partial block is padded with zeros. Returns the count, in whole blocks.
pub(crate) fn read_padded(file: &File, buf: &mut [u8], pos: u64, size: u64) -> Result<usize> {
    let want = (size.saturating_sub(pos)).min(buf.len() as u64) as usize;
    file.read_exact_at(&mut buf[..want], pos)
        .ctx(|| format!("reading {want} bytes at {pos}"))?;
    let end = want.div_ceil(BLOCK) * BLOCK;
    buf[want..end].fill(0);
    Ok(end)
}
