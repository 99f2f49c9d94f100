//! locksmithd's Prometheus metrics (served on a local Unix socket by
//! `fastpatch-metrics-socket` at `/run/locksmith/metrics.sock`, `LOCKSMITHD_METRICS_SOCKET`
//! moves it, `none` turns it off): the semaphore as last seen, whether
//! this machine holds or waits for a reboot slot and since when, reboots started, and lock
//! errors by backend and operation.

use std::collections::BTreeMap;
use std::sync::Mutex;

use fastpatch_metrics_socket::Exposition;

use crate::strategy::State;

/// The error kinds counted (`fastpatch_locksmithd_errors_total{kind=...}`).
pub const ERROR_KINDS: [&str; 5] = [
    "etcd_lock",
    "etcd_unlock",
    "fleetlock_lock",
    "fleetlock_unlock",
    "reboot",
];

#[derive(Debug, Default)]
struct Inner {
    state: &'static str,
    state_since: i64,
    holders: Option<i64>,
    max: Option<i64>,
    holds: bool,
    waiting: bool,
    reboots: u64,
    lock_attempts: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
}

/// What locksmithd has done, for the metrics socket.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        if let Ok(mut g) = self.inner.lock() {
            f(&mut g);
        }
    }

    /// The state machine moved to `state` at `now` (unix seconds); the same state again keeps
    /// its start time.
    pub fn set_state(&self, state: &State, now: i64) {
        self.with(|i| {
            i.waiting = state.waits_for_slot();
            if i.state != state.name() {
                i.state = state.name();
                i.state_since = now;
            }
        });
    }

    /// The semaphore as just read: its holders and max, and whether we are one of them.
    pub fn set_semaphore(&self, holders: i64, max: i64, holds: bool) {
        self.with(|i| {
            i.holders = Some(holders);
            i.max = Some(max);
            i.holds = holds;
        });
    }

    /// Without a semaphore to read (FleetLock, reboot): whether we hold the slot.
    pub fn set_holds(&self, holds: bool) {
        self.with(|i| i.holds = holds);
    }

    /// A lock attempt ended: `taken`, `full` or `error`.
    pub fn lock_attempt(&self, result: &'static str) {
        self.with(|i| *i.lock_attempts.entry(result).or_default() += 1);
    }

    /// One of [`ERROR_KINDS`].
    pub fn error(&self, kind: &'static str) {
        self.with(|i| *i.errors.entry(kind).or_default() += 1);
    }

    pub fn reboot_started(&self) {
        self.with(|i| i.reboots += 1);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let i = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut e = Exposition::new();
        let st = "fastpatch_locksmithd_state";
        e.family(
            st,
            "gauge",
            "1 for the reboot state machine's current state.",
        );
        for name in State::NAMES {
            e.labelled(st, "state", name, u8::from(i.state == name));
        }
        let since = "fastpatch_locksmithd_state_since_timestamp_seconds";
        e.family(since, "gauge", "Unix time the current state began.")
            .value(since, i.state_since);
        let holds = "fastpatch_locksmithd_holds_slot";
        e.family(holds, "gauge", "1 while this machine holds a reboot slot.")
            .value(holds, u8::from(i.holds));
        let waits = "fastpatch_locksmithd_waiting_for_slot";
        e.family(
            waits,
            "gauge",
            "1 while this machine waits for a reboot slot.",
        )
        .value(waits, u8::from(i.waiting));
        // The semaphore's gauges appear once it was read (etcd strategies only).
        if let (Some(h), Some(m)) = (i.holders, i.max) {
            let n = "fastpatch_locksmithd_semaphore_holders";
            e.family(
                n,
                "gauge",
                "Reboot slots held in the group, as last read from etcd.",
            )
            .value(n, h);
            let n = "fastpatch_locksmithd_semaphore_max";
            e.family(
                n,
                "gauge",
                "Reboot slots the group allows, as last read from etcd.",
            )
            .value(n, m);
        }
        let n = "fastpatch_locksmithd_lock_attempts_total";
        e.family(n, "counter", "Attempts to take a reboot slot, by result.");
        for r in ["taken", "full", "error"] {
            e.labelled(n, "result", r, i.lock_attempts.get(r).copied().unwrap_or(0));
        }
        let n = "fastpatch_locksmithd_reboots_total";
        e.family(n, "counter", "Reboots started.")
            .value(n, i.reboots);
        let n = "fastpatch_locksmithd_errors_total";
        e.family(
            n,
            "counter",
            "Failed lock backend operations and reboots, by kind.",
        );
        for k in ERROR_KINDS {
            e.labelled(n, "kind", k, i.errors.get(k).copied().unwrap_or(0));
        }
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_follows_what_happened() {
        let m = Metrics::default();
        m.set_state(&State::Locking { attempt: 0 }, 100);
        m.set_state(&State::Locking { attempt: 1 }, 130);
        m.lock_attempt("full");
        m.error("etcd_lock");
        let t = m.render();
        assert!(
            t.contains("fastpatch_locksmithd_state{state=\"locking\"} 1\n"),
            "{t}"
        );
        assert!(t.contains("fastpatch_locksmithd_state{state=\"idle\"} 0\n"));
        assert!(
            t.contains("fastpatch_locksmithd_state_since_timestamp_seconds 100\n"),
            "a retry in the same state keeps its start: {t}"
        );
        assert!(t.contains("fastpatch_locksmithd_waiting_for_slot 1\n"));
        assert!(t.contains("fastpatch_locksmithd_lock_attempts_total{result=\"full\"} 1\n"));
        assert!(t.contains("fastpatch_locksmithd_errors_total{kind=\"etcd_lock\"} 1\n"));
        assert!(!t.contains("semaphore_holders"), "not read yet: {t}");

        m.set_semaphore(1, 1, true);
        m.set_state(&State::Rebooting, 200);
        m.reboot_started();
        let t = m.render();
        assert!(t.contains("fastpatch_locksmithd_semaphore_holders 1\n"));
        assert!(t.contains("fastpatch_locksmithd_semaphore_max 1\n"));
        assert!(t.contains("fastpatch_locksmithd_holds_slot 1\n"));
        assert!(t.contains("fastpatch_locksmithd_waiting_for_slot 0\n"));
        assert!(t.contains("fastpatch_locksmithd_reboots_total 1\n"));
        assert!(t.contains("fastpatch_locksmithd_state_since_timestamp_seconds 200\n"));
    }
}
