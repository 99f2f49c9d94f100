//! Fleet simulation: N machines with a staged update, each running the real strategy state
//! machine against the real etcd semaphore, rebooting for a simulated time. Measures the
//! rollout against the ideal `ceil(N / max) × reboot time` and checks that no more than `max`
//! machines are ever rebooting at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::etcd::EtcdStore;
use crate::lease::LeaseKeeper;
use crate::semaphore::SemaphoreError;
use crate::store::{CoordError, Coordinator, RetryPolicy};
use crate::strategy::{step, Action, Event, Mode, Policy, State};

/// Results of one simulated rollout.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub machines: usize,
    pub max: i64,
    pub reboot_time: Duration,
    pub wall: Duration,
    pub ideal: Duration,
    /// Most machines rebooting at the same instant.
    pub peak_rebooting: usize,
    /// Most holders seen in the semaphore right after a lock.
    pub peak_holders: usize,
    /// Machines that finished: rebooted into the new version, released their slot.
    pub done: usize,
    /// Machines that died holding their slot (see [`Faults::die_holding`]).
    pub died: usize,
}

/// Faults a rollout runs with (beyond what the test does to etcd itself).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Each machine ties its hold to an etcd lease of this TTL (locksmithd's `LEASE_TTL`),
    /// kept alive while the machine is up; must exceed the reboot time.
    pub lease_ttl: Option<Duration>,
    /// This many machines die right after taking their slot: no reboot, no unlock, no more
    /// keep-alives. With leases their slots free after the TTL; without, they are held forever.
    pub die_holding: usize,
}

impl SimReport {
    pub fn ratio(&self) -> f64 {
        self.wall.as_secs_f64() / self.ideal.as_secs_f64()
    }
}

/// Errors of a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{0}")]
    Coord(#[from] CoordError),
    #[error("machine task failed: {0}")]
    Task(String),
}

/// Runs the rollout on `store` (the default group's semaphore, set to `max`).
pub async fn rollout(
    store: EtcdStore,
    machines: usize,
    max: i64,
    reboot_time: Duration,
) -> Result<SimReport, SimError> {
    rollout_with(store, machines, max, reboot_time, Faults::default()).await
}

/// [`rollout`] with faults.
pub async fn rollout_with(
    store: EtcdStore,
    machines: usize,
    max: i64,
    reboot_time: Duration,
    faults: Faults,
) -> Result<SimReport, SimError> {
    let coord = Coordinator::new(store, "", RetryPolicy::patient(Duration::from_secs(60)));
    coord.set_max(max).await?;
    let rebooting = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let peak_holders = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(machines);
    for i in 0..machines {
        let c = coord.clone();
        let fleet = Fleet {
            rebooting: rebooting.clone(),
            peak: peak.clone(),
            peak_holders: peak_holders.clone(),
        };
        let m = Machine {
            id: format!("sim-{i:04}"),
            reboot_time,
            lease_ttl: faults.lease_ttl,
            dies: i < faults.die_holding,
        };
        tasks.push(tokio::spawn(async move { m.run(c, fleet).await }));
    }
    let (mut done, mut died) = (0, 0);
    for t in tasks {
        match t.await.map_err(|e| SimError::Task(e.to_string()))?? {
            Ending::Done => done += 1,
            Ending::Died => died += 1,
        }
    }
    let rounds = machines.div_ceil(max.max(1) as usize) as u32;
    Ok(SimReport {
        machines,
        max,
        reboot_time,
        wall: started.elapsed(),
        ideal: reboot_time * rounds,
        peak_rebooting: peak.load(Ordering::SeqCst),
        peak_holders: peak_holders.load(Ordering::SeqCst),
        done,
        died,
    })
}

/// The counters every machine updates.
struct Fleet {
    rebooting: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    peak_holders: Arc<AtomicUsize>,
}

/// One simulated machine.
struct Machine {
    id: String,
    reboot_time: Duration,
    lease_ttl: Option<Duration>,
    dies: bool,
}

enum Ending {
    Done,
    Died,
}

impl Machine {
    /// Staged update → lock → reboot (sleep) → boot good → unlock, driven by [`step`]. A
    /// failed lock waits for the semaphore to change (an etcd watch) rather than polling,
    /// capped by the policy's retry interval. With a lease TTL the machine keeps its lease
    /// while it is up (the keeper stops during the reboot and a new one adopts the hold).
    async fn run(self, c: Coordinator<EtcdStore>, fleet: Fleet) -> Result<Ending, SimError> {
        let keep = |c: &Coordinator<EtcdStore>| {
            self.lease_ttl
                .map(|ttl| LeaseKeeper::spawn(c.clone(), self.id.clone(), ttl))
        };
        let mut keeper = keep(&c);
        let mut policy = Policy::new(Mode::Coordinated, None);
        policy.lock_retry = chrono::Duration::seconds(2);
        policy.unlock_backoff = chrono::Duration::milliseconds(50);
        let mut state = State::Idle;
        let mut events = std::collections::VecDeque::from([Event::UpdateStaged]);
        let mut booted_new = false;
        let mut last_rev = 0;
        while let Some(ev) = events.pop_front() {
            let (next, actions) = step(&policy, state, ev, chrono::Utc::now());
            state = next;
            for a in actions {
                match a {
                    Action::SetState(_) => {}
                    Action::Lock => {
                        if self.lease_ttl.is_some() {
                            // A hold needs a lease: wait for the keeper's first grant.
                            while keeper.as_ref().and_then(LeaseKeeper::current).is_none() {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        let lease = keeper.as_ref().and_then(LeaseKeeper::current);
                        match c.try_lock(&self.id, lease).await? {
                            Ok(holders) => {
                                fleet.peak_holders.fetch_max(holders, Ordering::SeqCst);
                                if self.dies {
                                    return Ok(Ending::Died); // the keeper stops with it
                                }
                                events.push_back(Event::Locked);
                            }
                            Err(seen) => {
                                last_rev = seen;
                                events.push_back(Event::LockFailed("semaphore is at 0".into()))
                            }
                        }
                    }
                    Action::WakeAfter(d) => {
                        let d = d.to_std().unwrap_or_default();
                        if matches!(state, State::Locking { .. }) {
                            // As locksmithd: a broken watch (etcd went away) means "try
                            // the lock again now"; the lock itself waits for etcd.
                            if let Err(e) = c.wait_free(last_rev, d).await {
                                tracing::debug!(id = %self.id, error = %e, "watch failed");
                            }
                        } else {
                            tokio::time::sleep(d).await;
                        }
                        events.push_back(Event::Tick);
                    }
                    Action::Broadcast => events.push_back(Event::Broadcasted { told: 0 }),
                    Action::Reboot => {
                        drop(keeper.take()); // the machine is down: no keep-alives
                        let now = fleet.rebooting.fetch_add(1, Ordering::SeqCst) + 1;
                        fleet.peak.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(self.reboot_time).await;
                        fleet.rebooting.fetch_sub(1, Ordering::SeqCst);
                        // The new boot: the daemon starts again and the boot is marked good.
                        keeper = keep(&c);
                        booted_new = true;
                        events.clear();
                        events.extend([Event::Start, Event::BootGood]);
                    }
                    Action::Unlock => match c.unlock(&self.id).await {
                        Ok(()) | Err(CoordError::Semaphore(SemaphoreError::NotHolder)) => {
                            events.push_back(Event::Unlocked)
                        }
                        Err(e) => events.push_back(Event::UnlockFailed(e.to_string())),
                    },
                }
            }
            if booted_new && state == State::Idle {
                return Ok(Ending::Done);
            }
        }
        Err(SimError::Task(format!("{} stopped in {state:?}", self.id)))
    }
}

/// Lock + unlock round trips per second for `dur` (one client, sequential).
pub async fn roundtrips(store: EtcdStore, dur: Duration) -> Result<f64, SimError> {
    let c = Coordinator::new(store, "bench", RetryPolicy::short());
    c.set_max(1).await?;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < dur {
        c.lock("bench-machine", None).await?;
        c.unlock("bench-machine").await?;
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
