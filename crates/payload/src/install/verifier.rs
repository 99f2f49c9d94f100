//! The read-back verifier thread: re-reads what the writer put on the slot, in slot order
//! while the install runs, and computes the SHA-256 that must equal `new_partition_info`.
//! If writes arrive out of order (or after a resume) it falls back to one full re-read.

use std::sync::mpsc::Receiver;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result};
use crate::install::target::InstallTarget;
use crate::install::writer::VerifyMsg;

const READ_CHUNK: usize = 1 << 20;
/// Verified bytes between write-back hints (overlaps the disk flush with the install).
const WRITEBACK_EVERY: u64 = 16 << 20;

pub struct Streaming {
    hasher: Sha256,
    /// Slot bytes [0, watermark) are hashed.
    watermark: u64,
}

/// Hashes the slot as the writer reports ranges. Returns the streaming state, or None when
/// the order broke and a full re-read is needed.
pub fn run(
    target: Arc<dyn InstallTarget>,
    size: u64,
    msgs: Receiver<VerifyMsg>,
) -> Result<Option<Streaming>> {
    let mut state: Option<Streaming> = None;
    let mut broken = false;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut flushed = 0u64;
    for msg in msgs {
        if broken {
            continue;
        }
        match msg {
            VerifyMsg::Head(head) if state.is_none() => {
                let n = (head.len() as u64).min(size) as usize;
                let mut hasher = Sha256::new();
                hasher.update(&head[..n]);
                state = Some(Streaming {
                    hasher,
                    watermark: head.len() as u64,
                });
            }
            VerifyMsg::Range(off, len) => {
                let Some(s) = state.as_mut() else {
                    broken = true;
                    continue;
                };
                if off >= size {
                    continue;
                }
                if off != s.watermark {
                    broken = true;
                    continue;
                }
                let end = (off + len).min(size);
                read_into(&*target, &mut s.hasher, off, end, &mut buf)?;
                s.watermark = end;
                if end - flushed >= WRITEBACK_EVERY {
                    target.start_writeback(flushed, end - flushed);
                    flushed = end;
                }
            }
            VerifyMsg::Head(_) | VerifyMsg::Reset => broken = true,
        }
    }
    Ok(if broken { None } else { state })
}

fn read_into(
    target: &dyn InstallTarget,
    hasher: &mut Sha256,
    mut pos: u64,
    end: u64,
    buf: &mut [u8],
) -> Result<()> {
    while pos < end {
        let n = ((end - pos) as usize).min(buf.len());
        target
            .read_at(&mut buf[..n], pos)
            .ctx(|| format!("reading back the slot at offset {pos}"))?;
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(())
}

/// The SHA-256 of the slot's first `size` bytes, the head taken from memory.
pub fn conclude(
    target: &dyn InstallTarget,
    head: &[u8],
    size: u64,
    streamed: Option<Streaming>,
) -> Result<[u8; 32]> {
    let (mut hasher, from) = match streamed {
        Some(s) if s.watermark >= size.min(head.len() as u64) => (s.hasher, s.watermark.min(size)),
        _ => {
            let mut h = Sha256::new();
            let n = (head.len() as u64).min(size) as usize;
            h.update(&head[..n]);
            (h, n as u64)
        }
    };
    let mut buf = vec![0u8; READ_CHUNK];
    read_into(target, &mut hasher, from, size, &mut buf)?;
    Ok(hasher.finalize().into())
}
