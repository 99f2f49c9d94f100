//! The writer thread: checks each operation's data hash, expands it (bzip2 / zstd / zeros)
//! onto its destination extents, keeps the first MiB of the slot in memory, tells the
//! read-back verifier what landed, and records checkpoints.

use std::io::Read;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{IoContext, PayloadError, Result};
use crate::failpoint::fail_here;
use crate::format::{OpKind, Plan, PlannedOp, BLOCK_SIZE};
use crate::install::source::{self, InstallSource};
use crate::install::state::StateStore;
use crate::install::target::InstallTarget;
use crate::ratelimit::TokenBucket;
use crate::stream::ResumePoint;

/// Output chunk for decompression and zero fills.
const CHUNK: usize = 256 << 10;
/// Largest zstd window accepted (2^23 = 8 MiB), bounding memory for hostile data.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// SOURCE_ZSTD: the window covers the source prefix (at most 16 MiB) and the output (at most
/// 8 MiB); the decoder keeps at most the output, the prefix is the source buffer.
const PATCH_WINDOW_LOG_MAX: u32 = 25;

pub struct Job {
    pub op: usize,
    pub data: Vec<u8>,
    pub resume: ResumePoint,
}

pub enum VerifyMsg {
    /// The complete held-back head (sent once every head block has been written).
    Head(Arc<Vec<u8>>),
    /// Bytes [offset, offset + len) past the head were written.
    Range(u64, u64),
    /// Written out of order: the verifier must re-read the whole slot at the end.
    Reset,
}

pub struct WriterConfig {
    pub plan: Arc<Plan>,
    pub target: Arc<dyn InstallTarget>,
    /// The delta's source (checked against the plan before the pipeline starts).
    pub source: Option<Arc<dyn InstallSource>>,
    pub state: Option<StateStore>,
    pub head: Vec<u8>,
    pub disk_rate: Option<u64>,
    pub checkpoint_bytes: u64,
}

pub struct WriterOutput {
    pub head: Vec<u8>,
    pub bytes_written: u64,
}

struct Writer {
    plan: Arc<Plan>,
    target: Arc<dyn InstallTarget>,
    source: Option<Arc<dyn InstallSource>>,
    state: Option<StateStore>,
    head: Vec<u8>,
    head_done: Vec<bool>,
    head_sent: bool,
    head_dirty: bool,
    bucket: Option<TokenBucket>,
    checkpoint_bytes: u64,
    since_checkpoint: u64,
    bytes_written: u64,
    verify: SyncSender<VerifyMsg>,
}

pub fn run(
    cfg: WriterConfig,
    jobs: Receiver<Job>,
    verify: SyncSender<VerifyMsg>,
) -> Result<WriterOutput> {
    let head_blocks = (cfg.head.len() as u64).div_ceil(BLOCK_SIZE) as usize;
    let mut w = Writer {
        plan: cfg.plan,
        target: cfg.target,
        source: cfg.source,
        state: cfg.state,
        head: cfg.head,
        head_done: vec![false; head_blocks],
        head_sent: false,
        head_dirty: false,
        bucket: cfg.disk_rate.map(TokenBucket::new),
        checkpoint_bytes: cfg.checkpoint_bytes,
        since_checkpoint: 0,
        bytes_written: 0,
        verify,
    };
    // Whatever a resumed install wrote before is already in the head buffer but not known
    // to be complete; the verifier re-reads everything in that case.
    for job in jobs {
        w.apply(&job)?;
        w.maybe_checkpoint(&job.resume)?;
    }
    Ok(WriterOutput {
        head: w.head,
        bytes_written: w.bytes_written,
    })
}

impl Writer {
    fn apply(&mut self, job: &Job) -> Result<()> {
        let plan = self.plan.clone();
        let op = &plan.ops[job.op];
        if let Some(want) = op.data_sha256 {
            let got: [u8; 32] = Sha256::digest(&job.data).into();
            if got != want {
                return Err(PayloadError::OperationHashMismatch { index: op.index });
            }
        }
        let mut out = ExtentCursor::new(op);
        let mut buf = vec![0u8; CHUNK];
        match op.kind {
            OpKind::Replace => self.put(&mut out, &job.data)?,
            OpKind::Zero => {}
            OpKind::ReplaceBz => {
                let mut dec = bzip2::read::BzDecoder::new(job.data.as_slice());
                self.pump(&mut dec, &mut out, &mut buf)?;
            }
            OpKind::ReplaceZstd => {
                let mut dec = zstd::stream::read::Decoder::with_buffer(job.data.as_slice())
                    .and_then(|mut d| d.window_log_max(ZSTD_WINDOW_LOG_MAX).map(|_| d))
                    .map_err(|e| PayloadError::Decompress {
                        index: op.index,
                        reason: e.to_string(),
                    })?;
                self.pump(&mut dec, &mut out, &mut buf)?;
            }
            OpKind::SourceCopy => {
                let src = self.op_source(op)?;
                self.put(&mut out, &src)?;
            }
            OpKind::SourceZstd => {
                let src = self.op_source(op)?;
                let mut dec =
                    zstd::stream::read::Decoder::with_ref_prefix(job.data.as_slice(), &src)
                        .and_then(|mut d| d.window_log_max(PATCH_WINDOW_LOG_MAX).map(|_| d))
                        .map_err(|e| PayloadError::Decompress {
                            index: op.index,
                            reason: e.to_string(),
                        })?;
                self.pump(&mut dec, &mut out, &mut buf)?;
            }
        }
        // Pad the rest of the destination with zeros.
        buf.fill(0);
        while out.remaining() > 0 {
            let n = (out.remaining() as usize).min(CHUNK);
            self.put(&mut out, &buf[..n])?;
        }
        self.report(op)
    }

    /// A delta operation's source bytes, hash-checked.
    fn op_source(&self, op: &PlannedOp) -> Result<Vec<u8>> {
        let source = self
            .source
            .as_deref()
            .ok_or_else(|| PayloadError::DeltaNeedsSource {
                from: "an unknown version".into(),
            })?;
        source::read_op_source(source, op)
    }

    fn pump(&mut self, dec: &mut dyn Read, out: &mut ExtentCursor, buf: &mut [u8]) -> Result<()> {
        loop {
            let n = dec.read(buf).map_err(|e| PayloadError::Decompress {
                index: out.index,
                reason: format!("corrupt compressed data: {e}"),
            })?;
            if n == 0 {
                return Ok(());
            }
            self.put(out, &buf[..n])?;
        }
    }

    /// Writes the next bytes of the operation's output to its extents.
    fn put(&mut self, out: &mut ExtentCursor, mut data: &[u8]) -> Result<()> {
        if data.len() as u64 > out.remaining() {
            return Err(PayloadError::Decompress {
                index: out.index,
                reason: "data expands beyond the operation's destination extents".into(),
            });
        }
        while !data.is_empty() {
            let (pos, room) = out.next_span();
            let n = (room.min(data.len() as u64)) as usize;
            self.write(pos, &data[..n])?;
            out.advance(n as u64);
            data = &data[n..];
        }
        Ok(())
    }

    fn write(&mut self, mut pos: u64, mut data: &[u8]) -> Result<()> {
        let head_len = self.head.len() as u64;
        if pos < head_len {
            let n = ((head_len - pos) as usize).min(data.len());
            self.head[pos as usize..pos as usize + n].copy_from_slice(&data[..n]);
            let first = pos / BLOCK_SIZE;
            let last = (pos + n as u64).div_ceil(BLOCK_SIZE);
            for b in first..last {
                self.head_done[b as usize] = true;
            }
            self.head_dirty = true;
            if self.head_sent {
                self.head_sent = false;
                let _ = self.verify.send(VerifyMsg::Reset);
            }
            pos += n as u64;
            data = &data[n..];
        }
        if data.is_empty() {
            return Ok(());
        }
        if let Some(bucket) = &mut self.bucket {
            bucket.throttle(data.len() as u64);
        }
        self.target
            .write_at(data, pos)
            .ctx(|| format!("writing {} bytes at offset {pos} of the target", data.len()))?;
        self.bytes_written += data.len() as u64;
        Ok(())
    }

    /// Tells the verifier what this operation wrote.
    fn report(&mut self, op: &PlannedOp) -> Result<()> {
        if !self.head_sent && self.head_done.iter().all(|d| *d) && !self.head_done.is_empty() {
            self.head_sent = true;
            let _ = self
                .verify
                .send(VerifyMsg::Head(Arc::new(self.head.clone())));
        }
        let head_len = self.head.len() as u64;
        for &(off, len) in &op.dst {
            let end = off + len;
            if end > head_len {
                let start = off.max(head_len);
                // A closed channel means the verifier gave up on streaming; it re-reads later.
                let _ = self.verify.send(VerifyMsg::Range(start, end - start));
            }
        }
        self.since_checkpoint += op.dst_len();
        Ok(())
    }

    fn maybe_checkpoint(&mut self, point: &ResumePoint) -> Result<()> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        if self.since_checkpoint < self.checkpoint_bytes {
            return Ok(());
        }
        fail_here!("payload::checkpoint::before_target_sync");
        self.target
            .sync()
            .ctx(|| "syncing the target before a checkpoint".into())?;
        fail_here!("payload::checkpoint::before_state_write");
        state.checkpoint(point, self.head_dirty.then_some(self.head.as_slice()))?;
        fail_here!("payload::checkpoint::after_state_write");
        self.head_dirty = false;
        self.since_checkpoint = 0;
        tracing::debug!(
            offset = point.offset,
            next_op = point.next_op,
            "install checkpoint"
        );
        Ok(())
    }
}

/// Walks an operation's destination extents as a linear output.
struct ExtentCursor {
    index: usize,
    dst: Vec<(u64, u64)>,
    ext: usize,
    within: u64,
    remaining: u64,
}

impl ExtentCursor {
    fn new(op: &PlannedOp) -> ExtentCursor {
        ExtentCursor {
            index: op.index,
            dst: op.dst.clone(),
            ext: 0,
            within: 0,
            remaining: op.dst_len(),
        }
    }

    fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Position and room left in the current extent.
    fn next_span(&mut self) -> (u64, u64) {
        while self.dst[self.ext].1 == self.within {
            self.ext += 1;
            self.within = 0;
        }
        let (off, len) = self.dst[self.ext];
        (off + self.within, len - self.within)
    }

    fn advance(&mut self, n: u64) {
        self.within += n;
        self.remaining -= n;
    }
}
