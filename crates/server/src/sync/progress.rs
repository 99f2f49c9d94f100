//! Where a channel's sync is: the `upstream_sync` row (dashboard, API) and, for the one-shot
//! command, download progress lines on stderr.

use std::time::{Duration, Instant};

use tracing::warn;

use crate::store::{Store, SyncRow, SyncState};

pub fn human_bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / MIB)
    } else {
        format!("{n} bytes")
    }
}

/// Writes where a channel's sync is (the `upstream_sync` row) and, for the one-shot command,
/// download progress on stderr.
pub struct Reporter<'a> {
    pub(super) store: &'a Store,
    pub(super) app: &'a str,
    pub(super) channel: &'a str,
    pub(super) arch: &'a str,
    pub(super) version: Option<String>,
    pub(super) terminal: bool,
    pub(super) last: Option<Instant>,
    pub(super) now: &'a (dyn Fn() -> i64 + Send + Sync),
    /// Bytes of the version's files before the current one, and of all of them.
    pub(super) base: u64,
    pub(super) total: u64,
    /// The last progress write, if still under way.
    pub(super) pending: Option<tokio::task::JoinHandle<()>>,
}

impl Reporter<'_> {
    fn row(&self, state: SyncState, message: String, done: i64, total: i64) -> SyncRow {
        SyncRow {
            app_id: self.app.to_owned(),
            channel: self.channel.to_owned(),
            arch: self.arch.to_owned(),
            state: state.as_str().to_owned(),
            version: self.version.clone(),
            done_bytes: done,
            total_bytes: total,
            message,
            updated_at: (self.now)(),
        }
    }

    pub(super) async fn state(&mut self, state: SyncState, message: String, done: i64, total: i64) {
        // A progress write still under way lands first, so it never overwrites this one.
        if let Some(pending) = self.pending.take() {
            let _ = pending.await;
        }
        let row = self.row(state, message, done, total);
        if let Err(e) = self.store.set_sync_status(&row).await {
            warn!(error = %e, "could not record the sync's progress");
        }
    }

    /// Records `row` without waiting (download progress comes from a synchronous callback).
    /// Writes land in order: each waits for the one before it, so an older progress row
    /// can never land after a newer one (or after the final state).
    fn record_soon(&mut self, row: SyncRow) {
        let store = self.store.clone();
        let before = self.pending.take();
        self.pending = Some(tokio::spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            if let Err(e) = store.set_sync_status(&row).await {
                warn!(error = %e, "could not record the sync's progress");
            }
        }));
    }
}

impl fastpatch_fetch::Progress for Reporter<'_> {
    /// At most one update a second (and always the first and the last).
    fn bytes(&mut self, name: &str, done: u64, size: u64) {
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        let busy = self.pending.as_ref().is_some_and(|p| !p.is_finished());
        if (!due || busy) && done != size {
            return;
        }
        self.last = Some(Instant::now());
        let (all_done, total) = (self.base + done, self.total.max(self.base + size));
        let pct = (all_done * 100).checked_div(total).unwrap_or(100);
        let msg = format!(
            "{name}: {} of {} ({pct}%)",
            human_bytes(done),
            human_bytes(size)
        );
        if self.terminal {
            eprintln!(
                "{} {} ({}) {msg}",
                self.channel,
                self.version.as_deref().unwrap_or("?"),
                self.arch
            );
        }
        let row = self.row(SyncState::Downloading, msg, all_done as i64, total as i64);
        self.record_soon(row);
    }

    fn verifying(&mut self, name: &str) {
        let total = self.total as i64;
        let row = self.row(
            SyncState::Verifying,
            format!("{name}: checking size and hashes"),
            total,
            total,
        );
        self.record_soon(row);
    }
}
