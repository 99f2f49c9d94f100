//! locksmithd's driver: performs the state machine's actions (lock, unlock, broadcast,
//! reboot, timers) and feeds results back as events. All decisions live in
//! [`crate::strategy::step`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::DaemonConfig;
use crate::dbus::UpdateStatusSource;
use crate::etcd::{EtcdConfig, EtcdStore};
use crate::fleetlock;
use crate::lease::LeaseKeeper;
use crate::metrics::Metrics;
use crate::store::{Coordinator, LockStore, RetryPolicy};
use crate::strategy::{step, Action, CoordState, Event, Mode, Policy, State, Strategy};

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Setup(String),
}

/// Where the lock is taken.
enum Backend {
    None,
    Etcd {
        coord: Box<Coordinator<EtcdStore>>,
        lease: Option<LeaseKeeper>,
    },
    FleetLock(fleetlock::Client),
}

/// Writes `<root>/run/update-engine/coordinator.conf` (atomically).
pub fn write_coordinator_conf(
    root: &Path,
    strategy: Strategy,
    state: CoordState,
) -> std::io::Result<()> {
    let dir = root.join("run/update-engine");
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(".coordinator.conf.tmp");
    std::fs::write(
        &tmp,
        format!(
            "NAME=locksmithd\nSTRATEGY={}\nSTATE={}\n",
            strategy.as_str(),
            state.as_str()
        ),
    )?;
    std::fs::rename(tmp, dir.join("coordinator.conf"))
}

async fn connect_etcd(cfg: &EtcdConfig) -> Result<EtcdStore, DaemonError> {
    EtcdStore::connect(cfg)
        .await
        .map_err(|e| DaemonError::Setup(format!("Error initializing etcd client: {e}")))
}

/// What performing an action needs.
struct Shell<'a> {
    cfg: &'a DaemonConfig,
    backend: &'a Backend,
    id: &'a str,
    metrics: &'a Metrics,
}

impl Shell<'_> {
    /// Reads the semaphore into the metrics (etcd only): one plain read, no write and no
    /// retries, at most 2 s, so an unreachable etcd does not hold up the state machine; a
    /// failed read leaves the metrics as they were. Holders whose lease expired do not count.
    async fn observe_semaphore(&self) {
        let Backend::Etcd { coord, .. } = self.backend else {
            return;
        };
        let read = coord.store().read(coord.key());
        let Ok(Ok(snap)) = tokio::time::timeout(Duration::from_secs(2), read).await else {
            return;
        };
        let (sem, _) = crate::store::reap(&snap);
        // An absent key is what locksmith creates on first use: max 1, no holders.
        let max = match snap.value {
            Some(_) => sem.max,
            None => crate::semaphore::Semaphore::fresh().max,
        };
        self.metrics
            .set_semaphore(sem.holders().len() as i64, max, sem.is_holder(self.id));
    }
}

/// Serves the metrics on the configured socket; a socket that cannot be bound is logged and
/// skipped (reboot coordination does not depend on it).
fn serve_metrics(
    cfg: &DaemonConfig,
    metrics: &Arc<Metrics>,
) -> Option<tokio::task::JoinHandle<()>> {
    let path = cfg.metrics_socket.as_ref()?;
    let m = metrics.clone();
    match fastpatch_metrics_socket::serve(path, Arc::new(move || m.render())) {
        Ok(task) => {
            info!(socket = %path.display(), "serving metrics");
            Some(task)
        }
        Err(e) => {
            warn!(socket = %path.display(), error = %e, "cannot serve metrics");
            None
        }
    }
}

/// Runs locksmithd until the process ends.
pub async fn run(cfg: DaemonConfig, updates: impl UpdateStatusSource) -> Result<(), DaemonError> {
    let id = crate::ctl::read_machine_id(&cfg.machine_id_file).map_err(DaemonError::Setup)?;
    let metrics = Arc::new(Metrics::default());
    let _metrics_task = serve_metrics(&cfg, &metrics);
    let set_state = |s: CoordState| {
        if let Err(e) = write_coordinator_conf(&cfg.root, cfg.strategy, s) {
            warn!(error = %e, "cannot write coordinator.conf");
        }
    };
    set_state(CoordState::Starting);

    // Resolve the strategy into a mode and a lock backend.
    let etcd_cfg = cfg.etcd.clone();
    let (mode, backend) = match cfg.strategy {
        Strategy::Off => (Mode::Off, Backend::None),
        Strategy::Reboot => (Mode::Uncoordinated, Backend::None),
        Strategy::FleetLock => {
            let url = cfg.fleetlock_url.clone().unwrap_or_default();
            let client =
                fleetlock::Client::new(&url, &cfg.group, &id, cfg.fleetlock_ca_file.as_deref())
                    .map_err(|e| DaemonError::Setup(e.to_string()))?;
            (Mode::Coordinated, Backend::FleetLock(client))
        }
        Strategy::EtcdLock => {
            let store = connect_etcd(&etcd_cfg.unwrap_or_else(EtcdConfig::local)).await?;
            (Mode::Coordinated, etcd_backend(&cfg, store, &id).await)
        }
        Strategy::BestEffort => match etcd_cfg {
            Some(e) => match EtcdStore::connect(&e).await {
                Ok(store) if store.healthy().await => {
                    info!("best-effort: etcd reachable, using etcd-lock");
                    (Mode::Coordinated, etcd_backend(&cfg, store, &id).await)
                }
                _ => {
                    info!("best-effort: etcd unreachable, using reboot");
                    (Mode::Uncoordinated, Backend::None)
                }
            },
            None => (Mode::Uncoordinated, Backend::None),
        },
    };

    let window = cfg.window.clone();
    let mut policy = Policy::new(mode, window);
    policy.reboot_delay = chrono::Duration::from_std(cfg.reboot_delay).unwrap_or_default();
    policy.lock_retry = chrono::Duration::from_std(cfg.lock_retry).unwrap_or_default();

    let mut rx = match updates.subscribe().await {
        Ok(rx) => Some(rx),
        Err(e) => {
            warn!(error = %e, "cannot watch the update engine on D-Bus");
            None
        }
    };
    let mut state = State::Idle;
    let mut timer: Option<Instant> = None;
    let mut queue = std::collections::VecDeque::from([Event::Start]);
    let mut boot_poll = tokio::time::interval(Duration::from_secs(5));
    // The semaphore's mod_revision seen when a lock attempt found it full: while we wait to
    // retry, an etcd watch from there wakes us as soon as a slot frees (not a full retry later).
    let mut full_at: Option<i64> = None;
    let shell = Shell {
        cfg: &cfg,
        backend: &backend,
        id: &id,
        metrics: &metrics,
    };
    shell.observe_semaphore().await;
    loop {
        while let Some(ev) = queue.pop_front() {
            let now = chrono::Utc::now();
            let (next, actions) = step(&policy, state, ev, now);
            state = next;
            metrics.set_state(&state, now.timestamp());
            for a in actions {
                let ev = perform(&shell, &a, &mut timer, &mut full_at, &set_state);
                if let Some(ev) = ev.await {
                    queue.push_back(ev);
                }
            }
        }
        let waiting_boot = matches!(state, State::WaitBootGood { .. });
        let slot_watch = match (&backend, full_at, timer) {
            (Backend::Etcd { coord, .. }, Some(rev), Some(at))
                if matches!(state, State::Locking { .. }) =>
            {
                Some((coord, rev, at.saturating_duration_since(Instant::now())))
            }
            _ => None,
        };
        tokio::select! {
            freed = async {
                let (coord, rev, left) = slot_watch.expect("guarded by is_some");
                coord.wait_free(rev, left).await
            }, if slot_watch.is_some() => {
                // Freed, timed out, or etcd trouble: either way the next attempt decides; one
                // watch per failed attempt, so a broken watch cannot spin.
                if let Err(e) = freed {
                    warn!(error = %e, "watching the semaphore failed; retrying the lock now");
                } else {
                    info!("a reboot slot may be free; retrying the lock");
                }
                full_at = None;
                timer = None;
                queue.push_back(Event::Tick);
            }
            st = async { rx.as_mut().unwrap().recv().await }, if rx.is_some() => match st {
                Some(st) if st.need_reboot() => queue.push_back(Event::UpdateStaged),
                Some(_) => {}
                None => rx = None,
            },
            _ = async { tokio::time::sleep_until(timer.unwrap()).await }, if timer.is_some() => {
                timer = None;
                queue.push_back(Event::Tick);
            }
            _ = boot_poll.tick(), if waiting_boot => {
                if boot_good(cfg.boot_good_command.as_deref()).await {
                    queue.push_back(Event::BootGood);
                }
            }
        }
    }
}

/// The etcd backend; with a lease TTL, grants a lease, keeps it alive, and moves a hold from
/// before the reboot onto it.
async fn etcd_backend(cfg: &DaemonConfig, store: EtcdStore, id: &str) -> Backend {
    let coord = Coordinator::new(
        store.clone(),
        &cfg.group,
        RetryPolicy::patient(Duration::from_secs(60)),
    );
    let Some(ttl) = cfg.lease_ttl else {
        return Backend::Etcd {
            coord: Box::new(coord),
            lease: None,
        };
    };
    let keeper = LeaseKeeper::spawn(coord.clone(), id.to_string(), ttl);
    Backend::Etcd {
        coord: Box::new(coord),
        lease: Some(keeper),
    }
}

async fn boot_good(cmd: Option<&str>) -> bool {
    match cmd {
        None => true,
        Some(c) => tokio::process::Command::new("sh")
            .arg("-c")
            .arg(c)
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false),
    }
}

/// Performs one action; returns the event it produced, if any.
async fn perform(
    shell: &Shell<'_>,
    action: &Action,
    timer: &mut Option<Instant>,
    full_at: &mut Option<i64>,
    set_state: &impl Fn(CoordState),
) -> Option<Event> {
    let Shell {
        cfg,
        backend,
        id,
        metrics,
    } = *shell;
    match action {
        Action::SetState(s) => {
            set_state(*s);
            None
        }
        Action::WakeAfter(d) => {
            *timer = Some(Instant::now() + d.to_std().unwrap_or_default());
            None
        }
        Action::Lock => {
            let r = match backend {
                Backend::None => Ok(()),
                Backend::Etcd { coord, lease } => {
                    let l = lease.as_ref().and_then(LeaseKeeper::current);
                    match coord.try_lock(id, l).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(seen)) => {
                            *full_at = Some(seen);
                            Err(("full", "all reboot slots are taken".to_string()))
                        }
                        Err(e) => Err(("etcd_lock", e.to_string())),
                    }
                }
                Backend::FleetLock(c) => c
                    .pre_reboot()
                    .await
                    .map_err(|e| ("fleetlock_lock", e.to_string())),
            };
            let ev = match r {
                Ok(()) => {
                    info!("reboot lock taken");
                    metrics.lock_attempt("taken");
                    metrics.set_holds(true);
                    Event::Locked
                }
                Err((kind, e)) => {
                    info!(error = %e, "reboot lock not available yet");
                    if kind == "full" {
                        metrics.lock_attempt("full");
                    } else {
                        metrics.lock_attempt("error");
                        metrics.error(kind);
                    }
                    Event::LockFailed(e)
                }
            };
            shell.observe_semaphore().await;
            Some(ev)
        }
        Action::Unlock => {
            let r = match backend {
                Backend::None => Ok(()),
                Backend::Etcd { coord, .. } => match coord.unlock(id).await {
                    Ok(()) => {
                        info!("reboot lock released: this boot is good");
                        Ok(())
                    }
                    Err(crate::store::CoordError::Semaphore(
                        crate::semaphore::SemaphoreError::NotHolder,
                    )) => Ok(()),
                    Err(e) => Err(("etcd_unlock", e.to_string())),
                },
                Backend::FleetLock(c) => c
                    .steady_state()
                    .await
                    .map_err(|e| ("fleetlock_unlock", e.to_string())),
            };
            let ev = match r {
                Ok(()) => {
                    metrics.set_holds(false);
                    Event::Unlocked
                }
                Err((kind, e)) => {
                    warn!(error = %e, "releasing the reboot lock failed; will retry");
                    metrics.error(kind);
                    Event::UnlockFailed(e)
                }
            };
            shell.observe_semaphore().await;
            Some(ev)
        }
        Action::Broadcast => {
            let told = if cfg.broadcast {
                let delay = chrono::Duration::from_std(cfg.reboot_delay).unwrap_or_default();
                let msg = crate::reboot::broadcast_message(chrono::Local::now(), delay);
                let told = crate::reboot::broadcast(&cfg.root, &msg);
                info!(
                    terminals = told,
                    delay_secs = cfg.reboot_delay.as_secs(),
                    "told logged-in users the machine reboots (waiting the delay only if someone was told)"
                );
                told
            } else {
                0
            };
            Some(Event::Broadcasted { told })
        }
        Action::Reboot => {
            if let Backend::Etcd {
                lease: Some(keeper),
                ..
            } = backend
            {
                if keeper.refresh().await {
                    info!(
                        ttl_secs = cfg.lease_ttl.unwrap_or_default().as_secs(),
                        "reboot hold's lease refreshed: it outlives a reboot of up to its TTL"
                    );
                } else {
                    warn!("cannot refresh the reboot hold's etcd lease; it may expire before the next boot takes it over");
                }
            }
            info!(method = %cfg.reboot_method, "rebooting");
            metrics.reboot_started();
            if let Err(e) = crate::reboot::reboot_by(
                &cfg.reboot_method,
                cfg.reboot_command.as_deref(),
                cfg.dbus_address.as_deref(),
            )
            .await
            {
                metrics.error("reboot");
                warn!(error = %e, "reboot failed");
            }
            None
        }
    }
}
