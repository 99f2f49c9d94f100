//! The CrAU stream demuxer and manifest planning (what the installer reads from the network):
//! never panics, holds no more than the plan allows, and gives the same pieces (or the same
//! error) whether the bytes arrive at once or split at an arbitrary point.
#![no_main]

use fastpatch_payload::stream::{Demux, Item};
use libfuzzer_sys::fuzz_target;

/// The slot size the target checks use (a small slot, so the size checks are reachable).
const SLOT_LEN: u64 = 1 << 20;

fn run(data: &[u8], cut: usize, slot_len: Option<u64>) -> Result<Vec<String>, String> {
    let mut demux = Demux::new(slot_len, false);
    let mut seen = Vec::new();
    let mut sink = |item: Item| {
        seen.push(match item {
            Item::Manifest { plan, raw, .. } => {
                format!(
                    "manifest {} bytes, {} ops, total {}",
                    raw.len(),
                    plan.ops.len(),
                    plan.total_len()
                )
            }
            Item::OpData { op, data, resume } => {
                format!(
                    "op {op}: {} bytes, resume at {} op {}",
                    data.len(),
                    resume.offset,
                    resume.next_op
                )
            }
            Item::Signatures { blob, digest } => {
                format!("signatures {} bytes over {digest:02x?}", blob.len())
            }
        });
        Ok(())
    };
    demux
        .push(&data[..cut], &mut sink)
        .map_err(|e| e.to_string())?;
    demux
        .push(&data[cut..], &mut sink)
        .map_err(|e| e.to_string())?;
    demux.finish(&mut sink).map_err(|e| e.to_string())?;
    Ok(seen)
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the split point; the rest is the payload.
    if data.len() < 2 {
        return;
    }
    let (choice, payload) = data.split_at(2);
    let cut = usize::from(u16::from_le_bytes([choice[0], choice[1]])) % (payload.len() + 1);
    for slot_len in [None, Some(SLOT_LEN)] {
        let whole = run(payload, payload.len(), slot_len);
        let split = run(payload, cut, slot_len);
        assert_eq!(whole, split, "split at {cut} changed the result");
    }
});
