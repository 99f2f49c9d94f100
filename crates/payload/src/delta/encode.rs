//! Encoding one group of changed blocks: find where its old version lies in the source
//! (anchor matches clustered into a few windows), then keep the smallest of zstd with those
//! windows as reference prefix (SOURCE_ZSTD), zstd alone (REPLACE_ZSTD) and raw (REPLACE).

use std::io::Write;

use sha2::{Digest, Sha256};

use crate::delta::index::SourceIndex;
use crate::error::{IoContext, Result};
use crate::format::{BLOCK_SIZE, MAX_OP_SOURCE};
use crate::proto::OpType;

/// Most source bytes one group references (half the format's limit).
const MAX_WINDOWS_LEN: u64 = MAX_OP_SOURCE / 2;
/// Anchor matches within this span form one cluster.
const CLUSTER_SPAN: u64 = 4 << 20;
/// Source bytes added on each side of a cluster's matches.
const PAD: u64 = 64 << 10;
/// A cluster needs this many matching anchors to be worth referencing.
const MIN_MATCHES: usize = 3;
/// At most this many windows per group.
const MAX_WINDOWS: usize = 4;
/// Skip trying zstd without the prefix when the patch is already this small a fraction.
const GOOD_PATCH: f64 = 0.25;

/// The encoded form of one group.
pub(crate) struct Encoded {
    pub kind: OpType,
    pub data: Vec<u8>,
    /// SOURCE_ZSTD: the source byte ranges of the prefix and their SHA-256.
    pub src: Vec<(u64, u64)>,
    pub src_sha256: Option<[u8; 32]>,
}

/// Encodes `data` (the group's new bytes) at zstd `level`.
pub(crate) fn encode(source: &SourceIndex, data: &[u8], level: i32) -> Result<Encoded> {
    let windows = windows(source.matches(data), source.size);
    let mut best = Encoded {
        kind: OpType::Replace,
        data: data.to_vec(),
        src: Vec::new(),
        src_sha256: None,
    };
    if !windows.is_empty() {
        let mut prefix = Vec::with_capacity(windows.iter().map(|w| w.1).sum::<u64>() as usize);
        for &(off, len) in &windows {
            let at = prefix.len();
            prefix.resize(at + len as usize, 0);
            source.read(&mut prefix[at..], off)?;
        }
        let patch = zstd_patch(data, &prefix, level)?;
        if patch.len() < best.data.len() {
            best = Encoded {
                kind: OpType::SourceZstd,
                src_sha256: Some(Sha256::digest(&prefix).into()),
                data: patch,
                src: windows,
            };
        }
    }
    if (best.data.len() as f64) > GOOD_PATCH * data.len() as f64 {
        let plain = zstd::bulk::compress(data, level).ctx(|| "zstd compression".into())?;
        if plain.len() < best.data.len() {
            best = Encoded {
                kind: OpType::ReplaceZstd,
                data: plain,
                src: Vec::new(),
                src_sha256: None,
            };
        }
    }
    Ok(best)
}

/// One zstd frame of `data` with `prefix` as its reference (what `zstd --patch-from` does),
/// its window just large enough to reach back over the whole prefix.
fn zstd_patch(data: &[u8], prefix: &[u8], level: i32) -> Result<Vec<u8>> {
    let total = (prefix.len() + data.len()) as u64;
    let window_log = (64 - total.next_power_of_two().leading_zeros() - 1).clamp(10, 25);
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(
        Vec::with_capacity(data.len() / 4),
        level,
        prefix,
    )
    .and_then(|mut e| {
        e.window_log(window_log)?;
        e.include_contentsize(true)?;
        e.set_pledged_src_size(Some(data.len() as u64))?;
        Ok(e)
    })
    .ctx(|| "setting up zstd with a source prefix".into())?;
    enc.write_all(data)
        .ctx(|| "zstd compression against the source".into())?;
    enc.finish()
        .ctx(|| "zstd compression against the source".into())
}

/// Clusters of anchor matches (source offsets) as block-aligned source windows, densest
/// first, in source order, at most `MAX_WINDOWS_LEN` bytes in all.
pub(crate) fn windows(mut matches: Vec<u64>, source_len: u64) -> Vec<(u64, u64)> {
    matches.sort_unstable();
    let mut picked: Vec<(u64, u64)> = Vec::new();
    let mut total = 0u64;
    while picked.len() < MAX_WINDOWS && !matches.is_empty() {
        let (lo, hi) = densest(&matches);
        if hi - lo < MIN_MATCHES {
            break;
        }
        let start = (matches[lo].saturating_sub(PAD) / BLOCK_SIZE) * BLOCK_SIZE;
        let end = ((matches[hi - 1] + PAD).div_ceil(BLOCK_SIZE) * BLOCK_SIZE)
            .min(source_len / BLOCK_SIZE * BLOCK_SIZE);
        matches.drain(lo..hi);
        if end <= start {
            continue;
        }
        let len = (end - start).min(MAX_WINDOWS_LEN - total);
        if len == 0 {
            break;
        }
        picked.push((start, len));
        total += len;
    }
    merge(picked)
}

/// The index range `[lo, hi)` of sorted `m` with the most entries within `CLUSTER_SPAN`.
fn densest(m: &[u64]) -> (usize, usize) {
    let (mut best, mut lo) = ((0, 0), 0);
    for hi in 0..m.len() {
        while m[hi] - m[lo] > CLUSTER_SPAN {
            lo += 1;
        }
        if hi + 1 - lo > best.1 - best.0 {
            best = (lo, hi + 1);
        }
    }
    best
}

/// Sorted, with overlapping or touching windows joined.
fn merge(mut w: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    w.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(w.len());
    for (off, len) in w {
        match out.last_mut() {
            Some(last) if off <= last.0 + last.1 => {
                let end = (off + len).max(last.0 + last.1);
                last.1 = end - last.0;
            }
            _ => out.push((off, len)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cluster_and_merge() {
        // Two dense clusters and a stray match.
        let mut m: Vec<u64> = (0..10).map(|i| (100 << 20) + i * 4096).collect();
        m.extend((0..5).map(|i| (10 << 20) + i * 8192));
        m.push(500 << 20);
        let w = windows(m, 1 << 30);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].0 <= 10 << 20 && w[0].0 + w[0].1 >= (10 << 20) + 4 * 8192);
        assert!(w[1].0 <= 100 << 20 && w[1].0 + w[1].1 >= (100 << 20) + 9 * 4096);
        assert!(w
            .iter()
            .all(|(o, l)| o % BLOCK_SIZE == 0 && l % BLOCK_SIZE == 0));
    }

    #[test]
    fn windows_stay_within_the_source_and_the_budget() {
        let m: Vec<u64> = (0..1000).map(|i| i * 40_000).collect();
        let w = windows(m, 30_000_000);
        let total: u64 = w.iter().map(|x| x.1).sum();
        assert!(total <= MAX_WINDOWS_LEN);
        assert!(w.iter().all(|(o, l)| o + l <= 30_000_000));
        assert!(windows(vec![5, 6], 1 << 20).is_empty(), "too few matches");
    }
}
