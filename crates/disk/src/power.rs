//! Simulated power cuts at byte granularity, for tests (compiled with the `failpoints` feature).
//!
//! Armed with a budget of N bytes, the next partition-table writes of the whole process write
//! N bytes in total and then stop: the write that crosses the budget lands only its first
//! bytes and every later one lands nothing, each failing with [`DiskError::InjectedCut`], as
//! if the power went off at that byte. The same budget can be spent by other writers (the
//! power-cut sweep's slot writes call [`take`]), so one cut point covers the whole machine.
//! The counter of bytes written lets a dry run measure how many cut points a cycle has.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Bytes still allowed; negative = not armed.
static BUDGET: AtomicI64 = AtomicI64::new(-1);
/// Bytes written through [`take`] since the last [`reset_counter`].
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Cuts the power after `bytes` more bytes.
pub fn arm(bytes: u64) {
    BUDGET.store(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::SeqCst);
}

/// Power stays on.
pub fn disarm() {
    BUDGET.store(-1, Ordering::SeqCst);
}

/// Whether the armed budget is spent (the power is off).
pub fn is_cut() -> bool {
    BUDGET.load(Ordering::SeqCst) == 0
}

pub fn bytes_written() -> u64 {
    WRITTEN.load(Ordering::SeqCst)
}

pub fn reset_counter() {
    WRITTEN.store(0, Ordering::SeqCst);
}

/// Asks to write `len` bytes: returns how many may land (`len` when not cut).
pub fn take(len: usize) -> usize {
    let mut allowed = len;
    let _ = BUDGET.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
        if left < 0 {
            return None;
        }
        allowed = usize::try_from(left).unwrap_or(usize::MAX).min(len);
        Some(left - allowed as i64)
    });
    WRITTEN.fetch_add(allowed as u64, Ordering::SeqCst);
    allowed
}
