//! The CrAU v1 container: header, limits, and the validation of a manifest into a [`Plan`]
//! the installer can follow. Pure logic, no I/O.

use serde::Serialize;

use crate::error::{PayloadError, Result};
use crate::proto::{DeltaArchiveManifest, Extent, InstallOperation, OpType, PartitionInfo};

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
/// Most source bytes one delta operation reads: the installer holds them in memory (with
/// the zstd window over them), which bounds a delta install's memory.
pub const MAX_OP_SOURCE: u64 = 16 << 20;
/// Most destination bytes of one SOURCE_ZSTD operation (its output is held in memory).
pub const MAX_OP_OUTPUT: u64 = 8 << 20;
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
    /// Delta: the source slot's bytes at `src`, written to `dst` (no data).
    SourceCopy,
    /// Delta: a zstd frame whose reference prefix is the source slot's bytes at `src`.
    SourceZstd,
}

impl OpKind {
    /// Every kind the installer applies (what the engine announces to the server).
    pub const ALL: [OpKind; 6] = [
        OpKind::Replace,
        OpKind::ReplaceBz,
        OpKind::ReplaceZstd,
        OpKind::Zero,
        OpKind::SourceCopy,
        OpKind::SourceZstd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Replace => "REPLACE",
            OpKind::ReplaceBz => "REPLACE_BZ",
            OpKind::ReplaceZstd => "REPLACE_ZSTD",
            OpKind::Zero => "ZERO",
            OpKind::SourceCopy => "SOURCE_COPY",
            OpKind::SourceZstd => "SOURCE_ZSTD",
        }
    }

    /// Whether the operation has a data blob in the payload.
    pub fn carries_data(self) -> bool {
        !matches!(self, OpKind::Zero | OpKind::SourceCopy)
    }

    /// Whether the operation reads the source slot (a delta operation).
    pub fn reads_source(self) -> bool {
        matches!(self, OpKind::SourceCopy | OpKind::SourceZstd)
    }
}

/// The image a delta payload applies to (`old_partition_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceImage {
    pub size: u64,
    pub sha256: [u8; 32],
    /// The source's version, when the generator was told it.
    pub version: Option<String>,
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
    /// Delta operations: the source byte ranges read, in order, and their SHA-256.
    pub src: Vec<(u64, u64)>,
    pub src_sha256: Option<[u8; 32]>,
}

impl PlannedOp {
    pub fn dst_len(&self) -> u64 {
        self.dst.iter().map(|(_, len)| len).sum()
    }
    pub fn data_end(&self) -> u64 {
        self.data_start + self.data_len
    }
    pub fn src_len(&self) -> u64 {
        self.src.iter().map(|(_, len)| len).sum()
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
    /// Set for a delta payload: the only source it applies to.
    pub source: Option<SourceImage>,
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
        OpType::SourceCopy => OpKind::SourceCopy,
        OpType::SourceZstd => OpKind::SourceZstd,
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
    let (new_size, new_sha256) = partition_info(manifest.new_partition_info.as_ref(), "new")?;
    if let Some(slot_len) = slot_len {
        if new_size > slot_len {
            return Err(PayloadError::PayloadTooLarge {
                image: new_size,
                slot_len,
            });
        }
    }
    let source = match &manifest.old_partition_info {
        None => None,
        Some(info) => {
            let (size, sha256) = partition_info(Some(info), "old")?;
            Some(SourceImage {
                size,
                sha256,
                version: manifest.old_image_version.clone(),
            })
        }
    };
    let blobs_start = HEADER_LEN + manifest_len;
    let mut walk = OpWalk {
        blobs_start,
        limit: slot_len.unwrap_or(u64::MAX),
        source_len: source.as_ref().map(|s| s.size),
        data_pos: 0,
        covered_end: 0,
    };
    let ops = manifest
        .partition_operations
        .iter()
        .enumerate()
        .map(|(index, op)| walk.op(index, op))
        .collect::<Result<Vec<_>>>()?;
    if ops.is_empty() {
        return Err(invalid("no partition operations".into()));
    }
    if walk.covered_end < new_size {
        return Err(invalid(format!(
            "operations cover {} bytes but the image is {new_size} bytes",
            walk.covered_end
        )));
    }
    let signatures = signatures(manifest, blobs_start, walk.data_pos)?;
    Ok(Plan {
        blobs_start,
        ops,
        signatures,
        new_size,
        new_sha256,
        source,
    })
}

/// Size and SHA-256 of `new_partition_info` / `old_partition_info`.
fn partition_info(info: Option<&PartitionInfo>, which: &str) -> Result<(u64, [u8; 32])> {
    let invalid = |msg: String| PayloadError::InvalidManifest(msg);
    let info = info.ok_or_else(|| invalid(format!("no {which}_partition_info")))?;
    let size = info
        .size
        .ok_or_else(|| invalid(format!("{which}_partition_info has no size")))?;
    let sha256: [u8; 32] = info
        .hash
        .as_deref()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| {
            invalid(format!(
                "{which}_partition_info hash is not a 32-byte SHA-256"
            ))
        })?;
    if size == 0 {
        return Err(invalid(format!("{which}_partition_info size is 0")));
    }
    Ok((size, sha256))
}

/// `(offset, length)` in bytes.
type ByteRange = (u64, u64);

/// The running state of the operation walk: where data may start, how far writes reach.
struct OpWalk {
    blobs_start: u64,
    /// Destination limit (the slot's length when known).
    limit: u64,
    /// The source image's length, for a delta payload.
    source_len: Option<u64>,
    /// End of the previous operation's data, relative to `blobs_start`.
    data_pos: u64,
    covered_end: u64,
}

impl OpWalk {
    fn op(&mut self, index: usize, op: &InstallOperation) -> Result<PlannedOp> {
        let bad = |reason: &str| PayloadError::InvalidOperation {
            index,
            reason: reason.into(),
        };
        let kind = op_kind(index, op)?;
        let data_len = op.data_length.unwrap_or(0);
        let data_off = op.data_offset.unwrap_or(self.data_pos);
        if !kind.carries_data() {
            if data_len != 0 {
                return Err(bad(&format!("{} operation carries data", kind.name())));
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
            if data_off < self.data_pos {
                return Err(bad(
                    "data overlaps or precedes the previous operation's (data must come in order)",
                ));
            }
        }
        let data_sha256 = optional_hash(op.data_sha256_hash.as_deref())
            .map_err(|()| bad("data hash is not 32 bytes"))?;
        // (Flatcar's full-payload generator may leave the per-operation hash out. Such data
        // is still covered by the signature and the read-back image hash, both checked
        // before the slot's first MiB is written.)
        if op.dst_extents.is_empty() {
            return Err(bad("no destination extents"));
        }
        let dst = extents(index, &op.dst_extents, self.limit, "destination")?;
        self.covered_end = self
            .covered_end
            .max(dst.iter().map(|(o, l)| o + l).max().unwrap_or(0));
        let (src, src_sha256) = self.source_of(index, kind, op)?;
        let planned = PlannedOp {
            index,
            kind,
            data_start: self
                .blobs_start
                .checked_add(data_off)
                .ok_or_else(|| bad("data offset overflows"))?,
            data_len,
            data_sha256,
            dst,
            src,
            src_sha256,
        };
        check_lengths(&planned).map_err(|reason| bad(&reason))?;
        if kind.carries_data() {
            self.data_pos = data_off
                .checked_add(data_len)
                .ok_or_else(|| bad("data length overflows"))?;
        }
        Ok(planned)
    }

    /// A delta operation's source extents and hash (both required); none for the others.
    fn source_of(
        &self,
        index: usize,
        kind: OpKind,
        op: &InstallOperation,
    ) -> Result<(Vec<ByteRange>, Option<[u8; 32]>)> {
        let bad = |reason: &str| PayloadError::InvalidOperation {
            index,
            reason: reason.into(),
        };
        if !kind.reads_source() {
            if !op.src_extents.is_empty() {
                return Err(bad(&format!(
                    "{} operation has source extents",
                    kind.name()
                )));
            }
            return Ok((Vec::new(), None));
        }
        let Some(source_len) = self.source_len else {
            return Err(bad(&format!(
                "{} in a payload without old_partition_info (a delta must name its source)",
                kind.name()
            )));
        };
        if op.src_extents.is_empty() {
            return Err(bad("delta operation without source extents"));
        }
        let src = extents(index, &op.src_extents, source_len, "source")?;
        let hash = optional_hash(op.src_sha256_hash.as_deref())
            .map_err(|()| bad("source hash is not 32 bytes"))?
            .ok_or_else(|| bad("delta operation without a source hash"))?;
        Ok((src, Some(hash)))
    }
}

fn optional_hash(h: Option<&[u8]>) -> std::result::Result<Option<[u8; 32]>, ()> {
    h.map(|h| <[u8; 32]>::try_from(h).map_err(|_| ()))
        .transpose()
}

/// Block extents as byte ranges, each inside `[0, limit)`.
fn extents(index: usize, list: &[Extent], limit: u64, what: &str) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::with_capacity(list.len());
    for ext in list {
        let start = ext.start_block.unwrap_or(0);
        let num = ext.num_blocks.unwrap_or(0);
        if start == HOLE {
            return Err(PayloadError::InvalidOperation {
                index,
                reason: format!("{what} extent is a hole"),
            });
        }
        if num == 0 {
            return Err(PayloadError::InvalidOperation {
                index,
                reason: format!("{what} extent of 0 blocks"),
            });
        }
        let range = start
            .checked_mul(BLOCK_SIZE)
            .zip(num.checked_mul(BLOCK_SIZE))
            .filter(|(off, len)| off.checked_add(*len).is_some_and(|end| end <= limit));
        let Some((off, len)) = range else {
            let end = start.saturating_add(num).saturating_mul(BLOCK_SIZE);
            return Err(match what {
                "destination" => PayloadError::ExtentOutOfRange {
                    index,
                    end,
                    slot_len: limit,
                },
                _ => PayloadError::InvalidOperation {
                    index,
                    reason: format!(
                        "{what} extent reaches byte {end}, beyond the {limit} byte source image"
                    ),
                },
            });
        };
        out.push((off, len));
    }
    Ok(out)
}

/// Length rules that bound what one operation makes the installer hold or write.
fn check_lengths(op: &PlannedOp) -> std::result::Result<(), String> {
    let (src, dst) = (op.src_len(), op.dst_len());
    match op.kind {
        OpKind::Replace if op.data_len > dst => {
            Err("REPLACE data is longer than its destination".into())
        }
        OpKind::SourceCopy if src != dst => {
            Err(format!("SOURCE_COPY reads {src} bytes but writes {dst}"))
        }
        OpKind::SourceCopy | OpKind::SourceZstd if src > MAX_OP_SOURCE => Err(format!(
            "reads {src} source bytes, more than the {MAX_OP_SOURCE} byte limit"
        )),
        OpKind::SourceZstd if dst > MAX_OP_OUTPUT => Err(format!(
            "SOURCE_ZSTD writes {dst} bytes, more than the {MAX_OP_OUTPUT} byte limit"
        )),
        _ => Ok(()),
    }
}

/// Where the Signatures message lives, checked against the end of the operation data.
fn signatures(
    manifest: &DeltaArchiveManifest,
    blobs_start: u64,
    data_pos: u64,
) -> Result<Option<(u64, u64)>> {
    let invalid = |msg: String| PayloadError::InvalidManifest(msg);
    match (manifest.signatures_offset, manifest.signatures_size) {
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
            Ok(Some((start, len)))
        }
        (None, None) => Ok(None),
        _ => Err(invalid(
            "only one of signatures_offset / signatures_size is set".into(),
        )),
    }
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
