//! The etcd boundary (`LockStore`) and the compare-and-swap loop every semaphore change runs
//! through (`Coordinator`).
//!
//! Every change reads the semaphore key and the holders' lease keys at one revision, applies a
//! pure operation, and writes back in one transaction guarded by the key's `mod_revision`. A
//! conflict (someone else wrote in between) re-reads and re-applies; an unreachable store is
//! retried with backoff until the policy's deadline.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use tracing::{debug, warn};

use crate::semaphore::{LockOutcome, Semaphore, SemaphoreError};

/// Errors of a store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer; worth retrying.
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// A refusal that will not change on retry (bad credentials, permission, bad argument).
    #[error("etcd refused the request: {0}")]
    Refused(String),
    /// The stored value is not a semaphore.
    #[error("{0}")]
    Corrupt(SemaphoreError),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The semaphore key and its holders' lease keys, read at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The semaphore value; `None` if the key does not exist.
    pub value: Option<Semaphore>,
    /// The key's `mod_revision` (0 when absent): the compare-and-swap token.
    pub mod_revision: i64,
    /// The store revision of the read (a watch starts after it).
    pub revision: i64,
    /// Holders that opted in to lease-backed holding (marker keys, no lease).
    pub leased: BTreeSet<String>,
    /// Holders whose lease key still exists (their lease is alive).
    pub alive: BTreeSet<String>,
}

/// One transactional write: the new value if `mod_revision` still matches, plus lease keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Write {
    pub expect_mod_revision: i64,
    pub value: Semaphore,
    /// Holder ids to attach to a lease: `(id, lease id)`.
    pub attach: Vec<(String, i64)>,
    /// Holder ids whose marker and lease keys to delete.
    pub detach: Vec<String>,
}

/// The storage boundary. Implemented for etcd v3 in [`crate::etcd`].
pub trait LockStore: Send + Sync {
    /// Reads the semaphore at `key` and its lease keys at one revision.
    fn read(&self, key: &str) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;
    /// Writes if the key's `mod_revision` still equals `w.expect_mod_revision`; `Ok(false)` on a
    /// conflict.
    fn write(&self, key: &str, w: &Write) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Returns when the key changed after `revision` (with `only_free`: when a change leaves
    /// a free slot), or after `timeout`.
    fn wait_change(
        &self,
        key: &str,
        revision: i64,
        timeout: Duration,
        only_free: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// How long and how often to retry an unreachable store.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Give up after this long (`None`: never).
    pub deadline: Option<Duration>,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// For a command line tool: a few seconds.
    pub fn short() -> Self {
        RetryPolicy {
            deadline: Some(Duration::from_secs(5)),
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
    /// For the daemon and servers: keep trying for a while.
    pub fn patient(deadline: Duration) -> Self {
        RetryPolicy {
            deadline: Some(deadline),
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

/// Errors of a semaphore operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CoordError {
    #[error("{0}")]
    Semaphore(#[from] SemaphoreError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Statistics of one operation (for benchmarks and logs).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpStats {
    pub conflicts: u32,
    pub store_errors: u32,
}

/// The semaphore of one group on one store.
#[derive(Debug, Clone)]
pub struct Coordinator<S> {
    store: S,
    key: String,
    retry: RetryPolicy,
}

impl<S: LockStore> Coordinator<S> {
    pub fn new(store: S, group: &str, retry: RetryPolicy) -> Self {
        Coordinator {
            store,
            key: crate::keys::semaphore_key(group),
            retry,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The current value (creating the key with max 1 if absent, as locksmith does), with
    /// holders whose lease expired removed.
    pub async fn get(&self) -> Result<Semaphore, CoordError> {
        let (sem, _) = self.update(|sem, _, _| Ok(sem.clone())).await?;
        Ok(sem)
    }

    /// Takes a slot for `id`; with `lease`, the hold is tied to that etcd lease (re-locking
    /// moves an existing hold onto the new lease). Re-locking by a holder succeeds.
    pub async fn lock(&self, id: &str, lease: Option<i64>) -> Result<LockOutcome, CoordError> {
        let (out, _) = self
            .update(|sem, w, _| {
                let out = sem.lock(id)?;
                if let Some(l) = lease {
                    w.attach.push((id.to_string(), l));
                }
                Ok(out)
            })
            .await?;
        Ok(out)
    }

    /// Moves an existing hold of `id` onto `lease` (after a restart with a new lease); does
    /// nothing if `id` holds no slot. Returns whether it holds one.
    pub async fn adopt(&self, id: &str, lease: i64) -> Result<bool, CoordError> {
        let (held, _) = self
            .update(|sem, w, _| {
                let held = sem.is_holder(id);
                if held {
                    w.attach.push((id.to_string(), lease));
                }
                Ok(held)
            })
            .await?;
        Ok(held)
    }

    /// Releases `id`'s slot. After an unanswered write, "holder does not exist" means our
    /// earlier write landed, so it counts as success (no holder lost, none released twice).
    pub async fn unlock(&self, id: &str) -> Result<(), CoordError> {
        self.update(|sem, w, after_unanswered_write| match sem.unlock(id) {
            Ok(()) => {
                w.detach.push(id.to_string());
                Ok(())
            }
            Err(SemaphoreError::NotHolder) if after_unanswered_write => {
                debug!("unlock: an earlier unanswered write had landed");
                Ok(())
            }
            Err(e) => Err(e),
        })
        .await?;
        Ok(())
    }

    /// Sets the number of slots; returns the old max and the new value.
    pub async fn set_max(&self, max: i64) -> Result<(i64, Semaphore), CoordError> {
        let ((old, sem), _) = self
            .update(|sem, _, _| {
                let old = sem.set_max(max)?;
                Ok((old, sem.clone()))
            })
            .await?;
        Ok((old, sem))
    }

    /// Waits until the semaphore changes after `revision` (or `timeout`).
    pub async fn wait_change(&self, revision: i64, timeout: Duration) -> Result<(), StoreError> {
        self.store
            .wait_change(&self.key, revision, timeout, false)
            .await
    }

    /// Waits until a change after `mod_revision` leaves a free slot (or `timeout`): lockers
    /// waiting on a full semaphore wake only when one of them can win.
    pub async fn wait_free(&self, mod_revision: i64, timeout: Duration) -> Result<(), StoreError> {
        self.store
            .wait_change(&self.key, mod_revision, timeout, true)
            .await
    }

    /// Like [`Self::lock`], but a full semaphore is `Ok(Err(..))` with the key's `mod_revision`
    /// as seen, for [`Self::wait_free`]; `Ok(Ok(holders))` on success.
    pub async fn try_lock(
        &self,
        id: &str,
        lease: Option<i64>,
    ) -> Result<Result<usize, i64>, CoordError> {
        let mut seen = 0;
        let r = self
            .update(|sem, w, _| {
                seen = w.expect_mod_revision;
                sem.lock(id)?;
                if let Some(l) = lease {
                    w.attach.push((id.to_string(), l));
                }
                Ok(sem.holders().len())
            })
            .await;
        match r {
            Ok((n, _)) => Ok(Ok(n)),
            Err(CoordError::Semaphore(SemaphoreError::Full(_))) => Ok(Err(seen)),
            Err(e) => Err(e),
        }
    }

    /// Current revision of the key's store (for [`Self::wait_change`]).
    pub async fn revision(&self) -> Result<i64, StoreError> {
        Ok(self.store.read(&self.key).await?.revision)
    }

    /// The compare-and-swap loop. `op` is pure and may run several times; its third argument
    /// says an earlier write of this operation went unanswered (it may have landed).
    pub async fn update<T>(
        &self,
        mut op: impl FnMut(&mut Semaphore, &mut Write, bool) -> Result<T, SemaphoreError>,
    ) -> Result<(T, OpStats), CoordError> {
        let started = std::time::Instant::now();
        let mut stats = OpStats::default();
        let mut delay = self.retry.first_delay;
        let mut ambiguous = false;
        loop {
            let attempt = async {
                let snap = self.store.read(&self.key).await?;
                let absent = snap.value.is_none();
                let (reaped, stale) = reap(&snap);
                let mut w = Write {
                    expect_mod_revision: snap.mod_revision,
                    value: reaped.clone(),
                    attach: vec![],
                    detach: stale.clone(),
                };
                let mut sem = reaped.clone();
                let result = op(&mut sem, &mut w, ambiguous);
                let changed = match &result {
                    Ok(_) => {
                        w.value = sem;
                        absent
                            || w.value != snap.value.clone().unwrap_or_default()
                            || !w.attach.is_empty()
                            || !w.detach.is_empty()
                    }
                    Err(_) => {
                        // Still commit the removal of stale holders.
                        w = Write {
                            expect_mod_revision: snap.mod_revision,
                            value: reaped,
                            attach: vec![],
                            detach: stale.clone(),
                        };
                        absent || !stale.is_empty()
                    }
                };
                if !stale.is_empty() {
                    warn!(key = %self.key, holders = ?stale, "removing holders whose lease expired");
                }
                let committed = if changed {
                    Some(self.store.write(&self.key, &w).await)
                } else {
                    None
                };
                Ok::<_, StoreError>((result, committed))
            };
            let outcome = attempt.await;
            if let Ok((_, Some(Err(_)))) = &outcome {
                // A write may have landed even though we saw no answer.
                ambiguous = true;
            }
            match outcome {
                Ok((result, None)) | Ok((result, Some(Ok(true)))) => {
                    return result.map(|v| (v, stats)).map_err(CoordError::from);
                }
                Ok((_, Some(Ok(false)))) => {
                    stats.conflicts += 1;
                    debug!(key = %self.key, "compare-and-swap conflict, retrying");
                }
                Ok((_, Some(Err(e)))) | Err(e) => {
                    if !e.is_transient() {
                        return Err(e.into());
                    }
                    stats.store_errors += 1;
                    if let Some(deadline) = self.retry.deadline {
                        if started.elapsed() >= deadline {
                            return Err(e.into());
                        }
                    }
                    warn!(key = %self.key, error = %e, "etcd operation failed, retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.retry.max_delay);
                }
            }
        }
    }
}

/// Removes holders that opted in to leases and whose lease key is gone; also lists markers of
/// ids that no longer hold (left behind by a plain locksmith unlock) for deletion.
pub fn reap(snap: &Snapshot) -> (Semaphore, Vec<String>) {
    let mut sem = snap.value.clone().unwrap_or_default();
    let mut stale = vec![];
    for id in snap.leased.difference(&snap.alive) {
        if sem.is_holder(id) {
            // Cannot fail: we just checked it holds.
            let _ = sem.unlock(id);
        }
        stale.push(id.clone());
    }
    for id in snap.leased.intersection(&snap.alive) {
        if !sem.is_holder(id) {
            stale.push(id.clone());
        }
    }
    (sem, stale)
}
