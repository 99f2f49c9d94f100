//! A reboot hold tied to an etcd lease, so a machine that dies holding its slot frees it when
//! the lease expires. One keeper per running daemon (locksmithd, and each simulated machine):
//! it grants a lease of `ttl`, keeps it alive every `ttl / 3`, and when the lease is gone (first
//! start, a new boot, etcd unreachable for longer than `ttl`) grants a new one and moves this
//! machine's hold, if it still has one, onto it. Holders without a lease (stock locksmith) are
//! never expired.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::etcd::EtcdStore;
use crate::store::Coordinator;

/// The background task keeping this machine's lease; stops when dropped (the machine is down).
pub struct LeaseKeeper {
    coord: Box<Coordinator<EtcdStore>>,
    lease: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts keeping a lease for `id`'s hold on `coord`'s semaphore.
    pub fn spawn(coord: Coordinator<EtcdStore>, id: String, ttl: Duration) -> LeaseKeeper {
        let lease = Arc::new(AtomicI64::new(0));
        let current = lease.clone();
        let keeper_coord = Box::new(coord.clone());
        let task = tokio::spawn(async move {
            loop {
                let cur = current.load(Ordering::SeqCst);
                let alive = cur != 0 && coord.store().keep_alive_once(cur).await.unwrap_or(false);
                if !alive {
                    match coord.store().grant_lease(ttl).await {
                        Ok(new) => {
                            current.store(new, Ordering::SeqCst);
                            if let Err(e) = coord.adopt(&id, new).await {
                                warn!(error = %e, "cannot move our hold onto the new lease");
                            }
                        }
                        Err(e) => warn!(error = %e, "cannot grant an etcd lease"),
                    }
                }
                tokio::time::sleep((ttl / 3).max(Duration::from_millis(200))).await;
            }
        });
        LeaseKeeper {
            coord: keeper_coord,
            lease,
            task,
        }
    }

    /// Refreshes the lease now, so that the whole TTL is left: done right before a reboot,
    /// because the hold must outlive the time until the next boot's keeper takes it over, and a
    /// lease refreshed every TTL/3 may have only 2/3 of it left. Returns whether it was alive.
    pub async fn refresh(&self) -> bool {
        match self.current() {
            Some(l) => self.coord.store().keep_alive_once(l).await.unwrap_or(false),
            None => false,
        }
    }

    /// The lease a new hold should be tied to (`None` until the first one is granted).
    pub fn current(&self) -> Option<i64> {
        Some(self.lease.load(Ordering::SeqCst)).filter(|l| *l != 0)
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}
