//! The CrAU v1 container: header, limits, and the validation of a manifest into a [`Plan`]
//! the installer can follow. Pure logic, no I/O.

use serde::Serialize;

use crate::error::{PayloadError, Result};
use crate::proto::{DeltaArchiveManifest, InstallOperation, OpType};

pub const MAGIC: &[u8; 4] = b"CrAU";
pub const VERSION: u64 = 1;
/// magic + version + manifest size.
pub const HEADER_LEN: u64 = 20;
pub const BLOCK_SIZE: u64 = 4096;
/// Extent start block meaning "no blocks on disk" (used by the signature no-op).
pub const HOLE: u64 = u64::MAX;
/// Signature message version for RSA-2048 PKCS#1 v1.5 over SHA-256 (Flatcar).
pub const SIGNATURE_VERSION: u32 = 2;

/// Limits that keep a hostile payload from making us allocate without bound.
pub const MAX_MANIFEST_LEN: u64 = 16 << 20;
/// Largest data blob of one operation (generators use 1 MiB chunks).
pub const MAX_OP_DATA: u64 = 8 << 20;
pub const MAX_SIGNATURES_LEN: u64 = 64 << 10;

/// Parses the 20-byte header; returns the manifest length.
pub fn parse_header(header: &[u8]) -> Result<u64> {
    if header.len() < HEADER_LEN as usize {
        return Err(PayloadError::Truncated {
            got: header.len() as u64,
            expected: HEADER_LEN,
        });
    }
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&header[..4]);
    if &magic != MAGIC {
        return Err(PayloadError::BadMagic(magic));
    }
    let version = u64::from_be_bytes(header[4..12].try_into().expect("8 bytes"));
    if version != VERSION {
        return Err(PayloadError::UnsupportedVersion(version));
    }
    let manifest_len = u64::from_be_bytes(header[12..20].try_into().expect("8 bytes"));
    if manifest_len > MAX_MANIFEST_LEN {
        return Err(PayloadError::ManifestTooLarge(manifest_len));
    }
    Ok(manifest_len)
}

pub fn encode_header(manifest_len: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..4].copy_from_slice(MAGIC);
    h[4..12].copy_from_slice(&VERSION.to_be_bytes());
    h[12..20].copy_from_slice(&manifest_len.to_be_bytes());
    h
}

/// How an operation's data becomes partition bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OpKind {
    Replace,
    ReplaceBz,
    ReplaceZstd,
    /// ZERO and DISCARD: write zeros, no data.
    Zero,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Replace => "REPLACE",
            OpKind::ReplaceBz => "REPLACE_BZ",
            OpKind::ReplaceZstd => "REPLACE_ZSTD",
            OpKind::Zero => "ZERO",
        }
    }
}

/// One validated partition operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedOp {
    pub index: usize,
    pub kind: OpKind,
    /// Absolute offset of the data in the payload file, and its length.
    pub data_start: u64,
    pub data_len: u64,
    pub data_sha256: Option<[u8; 32]>,
    /// Destination byte ranges in the slot, in write order.
    pub dst: Vec<(u64, u64)>,
}

impl PlannedOp {
    pub fn dst_len(&self) -> u64 {
        self.dst.iter().map(|(_, len)| len).sum()
    }
    pub fn data_end(&self) -> u64 {
        self.data_start + self.data_len
    }
}

/// Everything the installer needs from the manifest, checked for consistency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Absolute offset where the data blobs start (header + manifest).
    pub blobs_start: u64,
    pub ops: Vec<PlannedOp>,
    /// Absolute offset and length of the Signatures message; None for an unsigned payload.
    pub signatures: Option<(u64, u64)>,
    /// Size and SHA-256 of the partition image.
    pub new_size: u64,
    pub new_sha256: [u8; 32],
}

impl Plan {
    /// End of the signed region (the signature covers [0, signed_end)).
    pub fn signed_end(&self) -> u64 {
        match self.signatures {
            Some((start, _)) => start,
            None => self.ops.last().map_or(self.blobs_start, |op| op.data_end()),
        }
    }

    /// Total length of the payload file.
    pub fn total_len(&self) -> u64 {
        match self.signatures {
            Some((start, len)) => start + len,
            None => self.signed_end(),
        }
    }
}

fn op_kind(index: usize, op: &InstallOperation) -> Result<OpKind> {
    let kind = OpType::try_from(op.r#type).map_err(|_| PayloadError::UnsupportedOperation {
        index,
        kind: format!("operation type {}", op.r#type),
    })?;
    Ok(match kind {
        OpType::Replace => OpKind::Replace,
        OpType::ReplaceBz => OpKind::ReplaceBz,
        OpType::ReplaceZstd => OpKind::ReplaceZstd,
        OpType::Zero | OpType::Discard => OpKind::Zero,
        other => {
            return Err(PayloadError::UnsupportedOperation {
                index,
                kind: other.as_str_name().to_string(),
            })
        }
    })
}

/// Validates a manifest against the payload layout and, if known, the target slot size.
/// `slot_len: None` skips the slot checks (used by `verify` and `inspect`).
pub fn plan(
    manifest: &DeltaArchiveManifest,
    manifest_len: u64,
    slot_len: Option<u64>,
) -> Result<Plan> {
    let invalid = |msg: String| PayloadError::InvalidManifest(msg);
    let block_size = u64::from(manifest.block_size());
    if block_size != BLOCK_SIZE {
        return Err(invalid(format!(
            "block size {block_size}, expected {BLOCK_SIZE}"
        )));
    }
    if let Some(proc_with_ops) = manifest
        .procedures
        .iter()
        .position(|p| !p.operations.is_empty())
    {
        return Err(PayloadError::UnsupportedOperation {
            index: proc_with_ops,
            kind: "an install procedure (kernel) with operations".into(),
        });
    }
    let info = manifest
        .new_partition_info
        .as_ref()
        .ok_or_else(|| invalid("no new_partition_info".into()))?;
    let new_size = info
        .size
        .ok_or_else(|| invalid("new_partition_info has no size".into()))?;
    let new_sha256: [u8; 32] = info
        .hash
        .as_deref()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| invalid("new_partition_info hash is not a 32-byte SHA-256".into()))?;
    if new_size == 0 {
        return Err(invalid("new_partition_info size is 0".into()));
    }
    if let Some(slot_len) = slot_len {
        if new_size > slot_len {
            return Err(PayloadError::PayloadTooLarge {
                image: new_size,
                slot_len,
            });
        }
    }
    let blobs_start = HEADER_LEN + manifest_len;
    let limit = slot_len.unwrap_or(u64::MAX);
    let mut ops = Vec::with_capacity(manifest.partition_operations.len());
    let mut data_pos = 0u64; // relative to blobs_start
    let mut covered_end = 0u64;
    for (index, op) in manifest.partition_operations.iter().enumerate() {
        let bad = |reason: &str| PayloadError::InvalidOperation {
            index,
            reason: reason.into(),
        };
        let kind = op_kind(index, op)?;
        let data_len = op.data_length.unwrap_or(0);
        let data_off = op.data_offset.unwrap_or(data_pos);
        if kind == OpKind::Zero {
            if data_len != 0 {
                return Err(bad("ZERO/DISCARD operation carries data"));
            }
        } else {
            if data_len == 0 {
                return Err(bad("operation has no data"));
            }
            if data_len > MAX_OP_DATA {
                return Err(bad(&format!(
                    "data of {data_len} bytes exceeds the {MAX_OP_DATA} byte limit"
                )));
            }
            if data_off < data_pos {
                return Err(bad(
                    "data overlaps or precedes the previous operation's (data must come in order)",
                ));
            }
        }
        let data_sha256 = match &op.data_sha256_hash {
            Some(h) => Some(
                <[u8; 32]>::try_from(h.as_slice()).map_err(|_| bad("data hash is not 32 bytes"))?,
            ),
            // Flatcar's full-payload generator may leave the per-operation hash out. Such data
            // is still covered by the signature and the read-back image hash, both checked
            // before the slot's first MiB is written.
            None => None,
        };
        if op.dst_extents.is_empty() {
            return Err(bad("no destination extents"));
        }
        let mut dst = Vec::with_capacity(op.dst_extents.len());
        for ext in &op.dst_extents {
            let start = ext.start_block.unwrap_or(0);
            let num = ext.num_blocks.unwrap_or(0);
            if start == HOLE {
                return Err(bad("destination extent is a hole"));
            }
            if num == 0 {
                return Err(bad("destination extent of 0 blocks"));
            }
            let (Some(off), Some(len)) =
                (start.checked_mul(BLOCK_SIZE), num.checked_mul(BLOCK_SIZE))
            else {
                return Err(PayloadError::ExtentOutOfRange {
                    index,
                    end: u64::MAX,
                    slot_len: limit,
                });
            };
            let end = off.saturating_add(len);
            if end > limit {
                return Err(PayloadError::ExtentOutOfRange {
                    index,
                    end,
                    slot_len: limit,
                });
            }
            covered_end = covered_end.max(end);
            dst.push((off, len));
        }
        let planned = PlannedOp {
            index,
            kind,
            data_start: blobs_start
                .checked_add(data_off)
                .ok_or_else(|| bad("data offset overflows"))?,
            data_len,
            data_sha256,
            dst,
        };
        if kind == OpKind::Replace && data_len > planned.dst_len() {
            return Err(bad("REPLACE data is longer than its destination"));
        }
        if kind != OpKind::Zero {
            data_pos = data_off
                .checked_add(data_len)
                .ok_or_else(|| bad("data length overflows"))?;
        }
        ops.push(planned);
    }
    if ops.is_empty() {
        return Err(invalid("no partition operations".into()));
    }
    if covered_end < new_size {
        return Err(invalid(format!(
            "operations cover {covered_end} bytes but the image is {new_size} bytes"
        )));
    }
    let signatures = match (manifest.signatures_offset, manifest.signatures_size) {
        (Some(off), Some(len)) => {
            if off < data_pos {
                return Err(invalid("signatures overlap operation data".into()));
            }
            if len == 0 || len > MAX_SIGNATURES_LEN {
                return Err(invalid(format!("signatures size {len} out of range")));
            }
            let start = blobs_start
                .checked_add(off)
                .filter(|s| s.checked_add(len).is_some())
                .ok_or_else(|| invalid("signatures offset overflows".into()))?;
            Some((start, len))
        }
        (None, None) => None,
        _ => {
            return Err(invalid(
                "only one of signatures_offset / signatures_size is set".into(),
            ))
        }
    };
    Ok(Plan {
        blobs_start,
        ops,
        signatures,
        new_size,
        new_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_errors() {
        let h = encode_header(1234);
        assert_eq!(parse_header(&h).unwrap(), 1234);
        let mut bad = h;
        bad[0] = b'X';
        assert!(matches!(parse_header(&bad), Err(PayloadError::BadMagic(_))));
        let mut v2 = h;
        v2[11] = 2;
        assert!(matches!(
            parse_header(&v2),
            Err(PayloadError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            parse_header(&h[..10]),
            Err(PayloadError::Truncated { .. })
        ));
        assert!(matches!(
            parse_header(&encode_header(MAX_MANIFEST_LEN + 1)),
            Err(PayloadError::ManifestTooLarge(_))
        ));
    }
}
