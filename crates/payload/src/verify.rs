//! Offline checks of a payload file: `inspect` (what is in it) and `verify` (every
//! operation's hash, the signature against trusted keys, and the image hash after
//! expanding every operation in memory-bounded streaming fashion).

use std::io::{self, Read};

use rsa::RsaPublicKey;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{PayloadError, Result};
use crate::format::{OpKind, Plan};
use crate::proto::{DeltaArchiveManifest, Signatures};
use crate::signing::{self, SignatureMatch};
use crate::stream::{Demux, Item};

#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    pub kind: &'static str,
    pub count: usize,
    pub data_bytes: u64,
    pub dst_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub payload_len: u64,
    pub manifest_len: u64,
    pub block_size: u32,
    pub image_size: u64,
    pub image_sha256: String,
    pub operations: usize,
    pub op_kinds: Vec<OpSummary>,
    pub noop_operations: usize,
    pub signatures_offset: Option<u64>,
    pub signatures_size: Option<u64>,
    pub signature_versions: Vec<u32>,
    pub procedures: usize,
    /// A delta payload's source image (`old_partition_info`); None for a full payload.
    pub delta_source: Option<DeltaSource>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeltaSource {
    pub size: u64,
    pub sha256: String,
    pub version: Option<String>,
}

impl Inspection {
    /// The names of the operation kinds the payload uses (ZERO stands for DISCARD too).
    pub fn op_names(&self) -> Vec<&'static str> {
        self.op_kinds.iter().map(|k| k.kind).collect()
    }
}

fn summarize(manifest: &DeltaArchiveManifest, plan: &Plan) -> Inspection {
    let mut kinds: Vec<OpSummary> = Vec::new();
    for op in &plan.ops {
        let name = op.kind.name();
        let entry = match kinds.iter_mut().position(|k| k.kind == name) {
            Some(i) => &mut kinds[i],
            None => {
                kinds.push(OpSummary {
                    kind: name,
                    count: 0,
                    data_bytes: 0,
                    dst_bytes: 0,
                });
                kinds.last_mut().expect("just pushed")
            }
        };
        entry.count += 1;
        entry.data_bytes += op.data_len;
        entry.dst_bytes += op.dst_len();
    }
    Inspection {
        payload_len: plan.total_len(),
        manifest_len: plan.blobs_start - crate::format::HEADER_LEN,
        block_size: manifest.block_size(),
        image_size: plan.new_size,
        image_sha256: hex::encode(plan.new_sha256),
        operations: plan.ops.len(),
        op_kinds: kinds,
        noop_operations: manifest.noop_operations.len(),
        signatures_offset: manifest.signatures_offset,
        signatures_size: manifest.signatures_size,
        signature_versions: Vec::new(),
        procedures: manifest.procedures.len(),
        delta_source: plan.source.as_ref().map(|s| DeltaSource {
            size: s.size,
            sha256: hex::encode(s.sha256),
            version: s.version.clone(),
        }),
    }
}

/// Reads the header and manifest (and the signature versions, if `read_all`), checking the
/// structure but not hashes or signatures.
pub fn inspect(mut reader: impl Read) -> Result<Inspection> {
    let mut demux = Demux::new(None, false);
    let mut found: Option<Inspection> = None;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = read_some(&mut reader, &mut buf)?;
        let mut sink = |item: Item| {
            match item {
                Item::Manifest { manifest, plan, .. } => found = Some(summarize(&manifest, &plan)),
                Item::Signatures { blob, .. } => {
                    if let (Some(i), Some(v)) = (found.as_mut(), signature_versions(&blob)) {
                        i.signature_versions = v;
                    }
                }
                Item::OpData { .. } => {}
            }
            Ok(())
        };
        if n == 0 {
            demux.finish(&mut sink)?;
            break;
        }
        demux.push(&buf[..n], &mut sink)?;
    }
    found.ok_or(PayloadError::Truncated {
        got: 0,
        expected: crate::format::HEADER_LEN,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub inspection: Inspection,
    pub signature: SignatureMatch,
    /// Whether the image hash was checked (a full payload whose ops write in slot order; a
    /// delta's image needs its source, so only `install` can check it).
    pub image_hash_checked: bool,
}

/// Fully verifies a payload: structure, every operation's data hash, the signature against
/// `trusted` (required, non-empty), and the image hash when the operations write in order.
pub fn verify(mut reader: impl Read, trusted: &[RsaPublicKey]) -> Result<Verification> {
    if trusted.is_empty() {
        return Err(PayloadError::NoTrustedKeys);
    }
    let mut demux = Demux::new(None, true);
    let mut inspection = None;
    let mut plan = None;
    let mut signature = None;
    let mut image = ImageHasher {
        hasher: Sha256::new(),
        pos: 0,
        size: 0,
        in_order: true,
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = read_some(&mut reader, &mut buf)?;
        let mut sink = |item: Item| -> Result<()> {
            match item {
                Item::Manifest {
                    manifest, plan: p, ..
                } => {
                    inspection = Some(summarize(&manifest, &p));
                    image.size = p.new_size;
                    plan = Some(p);
                }
                Item::OpData { op, data, .. } => {
                    let plan = plan
                        .as_ref()
                        .ok_or_else(|| PayloadError::Poisoned("no manifest".into()))?;
                    image.op(&plan.ops[op], &data)?;
                }
                Item::Signatures { blob, digest } => {
                    if let (Some(i), Some(v)) = (inspection.as_mut(), signature_versions(&blob)) {
                        i.signature_versions = v;
                    }
                    signature = Some(signing::verify(&digest, &blob, trusted)?);
                }
            }
            Ok(())
        };
        if n == 0 {
            demux.finish(&mut sink)?;
            break;
        }
        demux.push(&buf[..n], &mut sink)?;
    }
    let (Some(inspection), Some(plan)) = (inspection, plan) else {
        return Err(PayloadError::Truncated {
            got: 0,
            expected: crate::format::HEADER_LEN,
        });
    };
    let signature = signature.ok_or(PayloadError::Unsigned)?;
    let image_hash_checked = image.in_order && image.pos >= plan.new_size;
    if image_hash_checked {
        let got: [u8; 32] = image.hasher.finalize().into();
        if got != plan.new_sha256 {
            return Err(PayloadError::PartitionMismatch(format!(
                "image SHA-256 {} differs from new_partition_info {}",
                hex::encode(got),
                hex::encode(plan.new_sha256)
            )));
        }
    }
    Ok(Verification {
        inspection,
        signature,
        image_hash_checked,
    })
}

fn read_some(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    loop {
        match reader.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(PayloadError::Io {
                    context: "reading the payload".into(),
                    error: e,
                })
            }
        }
    }
}

/// Hashes the image as the operations would write it, while they write in slot order.
struct ImageHasher {
    hasher: Sha256,
    pos: u64,
    size: u64,
    in_order: bool,
}

impl ImageHasher {
    fn op(&mut self, op: &crate::format::PlannedOp, data: &[u8]) -> Result<()> {
        if let Some(want) = op.data_sha256 {
            if <[u8; 32]>::from(Sha256::digest(data)) != want {
                return Err(PayloadError::OperationHashMismatch { index: op.index });
            }
        }
        if op.kind.reads_source() {
            self.in_order = false;
            return Ok(());
        }
        let start = self.pos;
        let contiguous = op.dst.iter().all(|&(off, len)| {
            let ok = off == self.pos;
            self.pos = off + len;
            ok
        });
        let mut out = Vec::with_capacity(op.dst_len() as usize);
        let limit = op.dst_len();
        let decompress_err = |e: io::Error| PayloadError::Decompress {
            index: op.index,
            reason: format!("corrupt compressed data: {e}"),
        };
        match op.kind {
            OpKind::Replace => out.extend_from_slice(data),
            OpKind::Zero | OpKind::SourceCopy | OpKind::SourceZstd => {}
            OpKind::ReplaceBz => {
                bzip2::read::BzDecoder::new(data)
                    .take(limit + 1)
                    .read_to_end(&mut out)
                    .map_err(decompress_err)?;
            }
            OpKind::ReplaceZstd => {
                let mut dec = zstd::stream::read::Decoder::new(data).map_err(decompress_err)?;
                dec.window_log_max(23).map_err(decompress_err)?;
                dec.take(limit + 1)
                    .read_to_end(&mut out)
                    .map_err(decompress_err)?;
            }
        }
        if out.len() as u64 > limit {
            return Err(PayloadError::Decompress {
                index: op.index,
                reason: "data expands beyond the operation's destination extents".into(),
            });
        }
        out.resize(limit as usize, 0);
        if !contiguous || !self.in_order {
            self.in_order = false;
            return Ok(());
        }
        let n = (self.size.saturating_sub(start) as usize).min(out.len());
        self.hasher.update(&out[..n]);
        Ok(())
    }
}

/// The key versions named in a signatures blob (`None` when it does not decode).
fn signature_versions(blob: &[u8]) -> Option<Vec<u32>> {
    let sigs = <Signatures as prost::Message>::decode(blob).ok()?;
    Some(
        sigs.signatures
            .iter()
            .map(|s| s.version.unwrap_or(0))
            .collect(),
    )
}
