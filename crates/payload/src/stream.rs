//! Incremental payload parser: bytes go in as they arrive (any split), validated pieces come
//! out — the manifest with its plan, each operation's data, and the signature block with the
//! SHA-256 of everything it signs. Holds at most one operation's data. No I/O, so the same
//! code serves install, verify and the fuzz test.

use std::sync::Arc;

use prost::Message;

use crate::error::{PayloadError, Result};
use crate::format::{self, Plan, HEADER_LEN};
use crate::proto::DeltaArchiveManifest;
use crate::sha::ResumableSha256;

/// A piece of the payload, complete.
#[derive(Debug)]
pub enum Item {
    Manifest {
        raw: Vec<u8>,
        manifest: Box<DeltaArchiveManifest>,
        plan: Arc<Plan>,
    },
    /// Data of `plan.ops[op]` (empty for ZERO and SOURCE_COPY). `resume` is the parser state right after it.
    OpData {
        op: usize,
        data: Vec<u8>,
        resume: ResumePoint,
    },
    Signatures {
        blob: Vec<u8>,
        /// SHA-256 of [0, signatures start): what the signatures sign.
        digest: [u8; 32],
    },
}

/// Where a parser can be restarted: the payload offset to continue from, the next operation
/// and the running hash of the signed region up to that offset.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResumePoint {
    pub offset: u64,
    pub next_op: usize,
    pub hasher: ResumableSha256,
}

#[derive(Debug)]
enum Stage {
    Header,
    Manifest { len: u64 },
    Body { plan: Arc<Plan>, next_op: usize },
    Done,
}

enum Want {
    Collect(u64),
    Skip(u64),
    Done,
}

#[derive(Debug)]
pub struct Demux {
    slot_len: Option<u64>,
    require_signed: bool,
    offset: u64,
    hasher: ResumableSha256,
    buf: Vec<u8>,
    stage: Stage,
}

impl Demux {
    /// A parser for a payload starting at byte 0. `slot_len` enables the target checks;
    /// `require_signed` rejects unsigned payloads as soon as the manifest is read.
    pub fn new(slot_len: Option<u64>, require_signed: bool) -> Demux {
        Demux {
            slot_len,
            require_signed,
            offset: 0,
            hasher: ResumableSha256::new(),
            buf: Vec::new(),
            stage: Stage::Header,
        }
    }

    /// A parser continuing at `point` of a payload whose manifest gave `plan`.
    pub fn resume(plan: Arc<Plan>, point: ResumePoint, require_signed: bool) -> Result<Demux> {
        if point.next_op > plan.ops.len()
            || point.offset > plan.total_len()
            || point.hasher.bytes_hashed() != point.offset.min(plan.signed_end())
        {
            return Err(PayloadError::State(
                "resume point does not fit the payload".into(),
            ));
        }
        Ok(Demux {
            slot_len: None,
            require_signed,
            offset: point.offset,
            hasher: point.hasher,
            buf: Vec::new(),
            stage: Stage::Body {
                plan,
                next_op: point.next_op,
            },
        })
    }

    /// Bytes consumed so far (absolute payload offset).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// Total payload length, once the manifest is known.
    pub fn total_len(&self) -> Option<u64> {
        match &self.stage {
            Stage::Body { plan, .. } => Some(plan.total_len()),
            _ => None,
        }
    }

    fn signed_end(&self) -> u64 {
        match &self.stage {
            Stage::Body { plan, .. } => plan.signed_end(),
            Stage::Done => 0,
            _ => u64::MAX,
        }
    }

    fn want(&self) -> Want {
        match &self.stage {
            Stage::Header => Want::Collect(HEADER_LEN),
            Stage::Manifest { len } => Want::Collect(*len),
            Stage::Done => Want::Done,
            Stage::Body { plan, next_op } => {
                let (start, len) = match plan.ops.get(*next_op) {
                    Some(op) => (op.data_start, op.data_len),
                    None => match plan.signatures {
                        Some(sig) => sig,
                        None => return Want::Done,
                    },
                };
                if self.offset < start {
                    Want::Skip(start - self.offset)
                } else {
                    Want::Collect(len)
                }
            }
        }
    }

    /// Emits pieces that need no more bytes: ZERO and SOURCE_COPY operations, the end of an unsigned payload.
    fn emit_ready(&mut self, sink: &mut dyn FnMut(Item) -> Result<()>) -> Result<()> {
        loop {
            let Stage::Body { plan, next_op } = &mut self.stage else {
                return Ok(());
            };
            match plan.ops.get(*next_op) {
                Some(op) if !op.kind.carries_data() => {
                    emit_op(next_op, self.offset, &self.hasher, Vec::new(), sink)?;
                }
                None if plan.signatures.is_none() => {
                    self.stage = Stage::Done;
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
    }

    /// Consumes `data`, calling `sink` for each completed piece, in payload order.
    pub fn push(
        &mut self,
        mut data: &[u8],
        sink: &mut dyn FnMut(Item) -> Result<()>,
    ) -> Result<()> {
        loop {
            self.emit_ready(sink)?;
            if data.is_empty() {
                return Ok(());
            }
            let want = self.want();
            let take = match want {
                // The offset, not the count: the count would depend on how the bytes arrive.
                Want::Done => return Err(PayloadError::TrailingData { end: self.offset }),
                Want::Skip(n) => n.min(data.len() as u64) as usize,
                Want::Collect(n) => (n - self.buf.len() as u64).min(data.len() as u64) as usize,
            };
            let (now, rest) = data.split_at(take);
            let signed_end = self.signed_end();
            if self.offset < signed_end {
                let hashed = ((signed_end - self.offset).min(take as u64)) as usize;
                self.hasher.update(&now[..hashed]);
            }
            self.offset += take as u64;
            data = rest;
            if let Want::Collect(n) = want {
                if self.buf.capacity() == 0 {
                    self.buf.reserve_exact(n as usize);
                }
                self.buf.extend_from_slice(now);
                if self.buf.len() as u64 == n {
                    self.complete(sink)?;
                }
            }
        }
    }

    fn complete(&mut self, sink: &mut dyn FnMut(Item) -> Result<()>) -> Result<()> {
        let buf = std::mem::take(&mut self.buf);
        match &mut self.stage {
            Stage::Header => {
                let len = format::parse_header(&buf)?;
                self.stage = Stage::Manifest { len };
                if len == 0 {
                    self.complete(sink)?;
                }
            }
            Stage::Manifest { len } => {
                let manifest = DeltaArchiveManifest::decode(buf.as_slice())?;
                let plan = Arc::new(format::plan(&manifest, *len, self.slot_len)?);
                if plan.signatures.is_none() && self.require_signed {
                    return Err(PayloadError::Unsigned);
                }
                self.stage = Stage::Body {
                    plan: plan.clone(),
                    next_op: 0,
                };
                sink(Item::Manifest {
                    raw: buf,
                    manifest: Box::new(manifest),
                    plan,
                })?;
            }
            Stage::Body { plan, next_op } => {
                if *next_op < plan.ops.len() {
                    emit_op(next_op, self.offset, &self.hasher, buf, sink)?;
                } else {
                    let digest = self.hasher.finalize();
                    self.stage = Stage::Done;
                    sink(Item::Signatures { blob: buf, digest })?;
                }
            }
            Stage::Done => {}
        }
        Ok(())
    }

    /// Call at the end of the input: anything short of the whole payload is an error.
    pub fn finish(&mut self, sink: &mut dyn FnMut(Item) -> Result<()>) -> Result<()> {
        self.emit_ready(sink)?;
        if self.is_done() {
            return Ok(());
        }
        let expected = self
            .total_len()
            .unwrap_or_else(|| self.offset.max(HEADER_LEN) + 1);
        Err(PayloadError::Truncated {
            got: self.offset,
            expected,
        })
    }
}

/// Hands operation `*next_op` and its data to the sink, with the point a resume restarts from
/// (right after it: this offset, the next operation, the payload hash so far).
fn emit_op(
    next_op: &mut usize,
    offset: u64,
    hasher: &ResumableSha256,
    data: Vec<u8>,
    sink: &mut dyn FnMut(Item) -> Result<()>,
) -> Result<()> {
    let op = *next_op;
    *next_op += 1;
    let resume = ResumePoint {
        offset,
        next_op: *next_op,
        hasher: hasher.clone(),
    };
    sink(Item::OpData { op, data, resume })
}
