//! The daemon: a thin tokio shell that performs the state machine's actions and feeds the
//! outcomes back in. Nothing here decides what happens next; [`Engine::step`] does.
//!
//! ```text
//!  timer / D-Bus / task results ──► Engine::step ──► actions ──► HTTP, installer, GPT,
//!                                                                state file, D-Bus signal
//! ```
//!
//! Tasks: Omaha checks and pings (one at a time), a sequential event reporter (so the server
//! sees 13/1, 14/1, 3/1 in order), the download + install of one offer, the health gate, the
//! metrics socket. Results of an abandoned install are dropped with its channel.

mod boot;
mod checks;
pub mod cli;
pub mod config;
pub mod download;
pub mod extensions;
pub mod health;
mod install;
pub mod metrics;
pub mod omaha;
mod reporter;

use std::collections::VecDeque;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use fastpatch_boot_control::BootControl;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use self::boot::{boot_control, passive_refused, passive_staged};
use self::config::DaemonConfig;
use self::download::InstallHandle;
use self::metrics::Metrics;
use self::omaha::{Facts, RequestKind};
use self::reporter::{spawn_reporter, ReportJob};
use crate::dbus::{self, Manager, Request as DbusRequest};
use crate::health::{self as gate, HealthDecision};
use crate::machine::{Action, BootFacts, Engine, Input};
use crate::report::{ErrorCode, ErrorFlags};
use crate::schedule;
use crate::status::UpdateStatus;
use crate::status_report::{SignalThrottle, StatusSnapshot};

/// Results of background tasks, back to the loop.
#[derive(Debug)]
enum Msg {
    /// An Omaha check or ping got an answer (or did not).
    Checked {
        input: Input,
        answered: bool,
        max_failures_per_url: Option<u32>,
    },
    Input(Input),
    Health(HealthDecision),
}

/// The running daemon.
pub struct Daemon {
    cfg: DaemonConfig,
    engine: Engine,
    facts: Facts,
    boot: Box<dyn BootControl + Send>,
    http: reqwest::Client,
    snapshot: Arc<Mutex<StatusSnapshot>>,
    conn: Option<zbus::Connection>,
    throttle: SignalThrottle,
    last_signal: Instant,
    metrics: Arc<Metrics>,
    last_checked: i64,
    next_check: Option<Instant>,
    max_failures_per_url: u32,
    /// Whether update checks say `delta_okay="true"`: the config's `download.delta`, turned
    /// off by a delta that did not fit the booted slot.
    delta_okay: Arc<std::sync::atomic::AtomicBool>,
    install: Option<InstallHandle>,
    install_rx: Option<mpsc::UnboundedReceiver<Input>>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    reporter: mpsc::UnboundedSender<ReportJob>,
    dbus_rx: Option<mpsc::Receiver<DbusRequest>>,
    queue: VecDeque<Input>,
}

fn unit_random() -> f64 {
    let h = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Daemon {
    /// Reads the machine, the state file and the disk; connects to D-Bus; nothing is
    /// performed yet.
    pub async fn new(cfg: DaemonConfig) -> Result<Daemon> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let facts = Facts::read(&cfg.root, &cfg.boot_id_path).context("reading machine facts")?;
        // The booted version's system extensions (placed with its update) take their links.
        extensions::activate_logged(&cfg.extension_layout(), &facts.version);
        let durable = crate::persist::load(&cfg.state_file)?;
        let boot = boot_control(&cfg)?;
        let staged = passive_staged(&boot).context("reading the slots")?;
        let refused = passive_refused(&cfg, &boot)?;
        let (mut engine, start_actions) = Engine::start(
            durable,
            BootFacts {
                current_version: facts.version.clone(),
                boot_id: facts.boot_id.clone(),
                passive_slot_staged: staged,
                passive_slot_refused: refused,
            },
        );
        engine.set_reboot_after_update(cfg.reboot_after_update);
        let http = http_client(&cfg)?;
        let snapshot = Arc::new(Mutex::new(StatusSnapshot::of(&engine, 0)));
        let (conn, dbus_rx) = if cfg.dbus {
            let (dbus_tx, dbus_rx) = mpsc::channel(16);
            let conn = dbus::serve(
                cfg.dbus_address.as_deref(),
                Manager::new(snapshot.clone(), dbus_tx),
            )
            .await
            .context("serving com.coreos.update1 on D-Bus")?;
            (Some(conn), Some(dbus_rx))
        } else {
            tracing::info!("D-Bus is off (dbus = false): status only in logs and metrics");
            (None, None)
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let reporter = spawn_reporter(http.clone(), cfg.clone(), tx.clone());
        let mut d = Daemon {
            engine,
            facts,
            boot: Box::new(boot),
            http,
            snapshot,
            conn,
            throttle: SignalThrottle::default(),
            last_signal: Instant::now(),
            metrics: Arc::new(Metrics::default()),
            last_checked: 0,
            next_check: None,
            max_failures_per_url: fastpatch_omaha::DEFAULT_MAX_FAILURE_COUNT_PER_URL,
            delta_okay: Arc::new(std::sync::atomic::AtomicBool::new(cfg.download.delta)),
            install: None,
            install_rx: None,
            tx,
            rx,
            reporter,
            dbus_rx,
            queue: VecDeque::new(),
            cfg,
        };
        d.perform(start_actions).await;
        Ok(d)
    }

    pub fn status(&self) -> UpdateStatus {
        self.engine.status()
    }

    /// Runs until `shutdown` resolves (SIGTERM in production).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let _metrics_task = match &self.cfg.metrics_socket {
            Some(p) => Some(
                metrics::serve(p, self.metrics.clone())
                    .with_context(|| format!("binding the metrics socket {}", p.display()))?,
            ),
            None => None,
        };
        self.start_gate().await?;
        let mut dbus_rx = self.dbus_rx.take();
        tokio::pin!(shutdown);
        loop {
            let wake = self.next_check;
            tokio::select! {
                _ = &mut shutdown => break,
                _ = sleep_until_opt(wake) => {
                    self.next_check = None;
                    self.check_due(false).await;
                }
                Some(req) = recv_dbus(&mut dbus_rx) => match req {
                    DbusRequest::AttemptUpdate => self.check_due(true).await,
                    DbusRequest::ResetStatus => self.handle(Input::ResetStatus).await,
                },
                input = recv_opt(&mut self.install_rx) => match input {
                    Some(input) => self.handle(input).await,
                    None => self.install_rx = None,
                },
                Some(msg) = self.rx.recv() => self.on_msg(msg).await,
            }
        }
        tracing::info!("shutting down");
        self.install = None;
        Ok(())
    }

    async fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Checked {
                input,
                answered,
                max_failures_per_url,
            } => {
                if answered {
                    self.last_checked = now_unix();
                    self.metrics.set_last_check(self.last_checked);
                }
                match &input {
                    Input::CheckFailed { server_error: true } => {
                        self.metrics.failure("check_server")
                    }
                    Input::CheckFailed { .. } | Input::Failed { .. } => {
                        self.metrics.failure("check")
                    }
                    _ => {}
                }
                if let Some(m) = max_failures_per_url {
                    self.max_failures_per_url = m;
                }
                self.handle(input).await;
            }
            Msg::Input(input) => self.handle(input).await,
            Msg::Health(decision) => self.on_gate(decision).await,
        }
    }

    /// The health gate at start: a slot already marked good is a normal boot; otherwise the
    /// checks run until they pass (mark good) or time out (reboot or report).
    async fn start_gate(&mut self) -> Result<()> {
        let booted = self.boot.slot_state(self.boot.booted())?;
        if booted.attrs.successful {
            tracing::info!(slot = %booted.slot, "booted slot already marked good");
            self.handle(Input::BootMarkedGood).await;
            return Ok(());
        }
        let on_target = self.cfg.gate_on_boot_complete();
        if on_target {
            tracing::info!(slot = %booted.slot, "first boot of this slot: waiting for {} ({} runs the health checks)", health::BOOT_COMPLETE, health::CHECK_UNIT);
        } else {
            tracing::info!(slot = %booted.slot, "first boot of this slot: running the health gate");
        }
        self.handle(Input::HealthGateStarted).await;
        let cfg = self.cfg.clone();
        let tx = self.tx.clone();
        // On a systemd machine the checks have their own deadline in the check unit; the
        // engine's is a backstop for a boot that never gets to them.
        let timeout = if on_target {
            cfg.health_timeout() + Duration::from_secs(300)
        } else {
            cfg.health_timeout()
        };
        tokio::spawn(async move {
            let started = Instant::now();
            // What was last logged at info: a wait is logged again only when it changes.
            let mut logged: Option<Vec<String>> = None;
            loop {
                let obs = if on_target {
                    health::observe_boot_complete(&cfg.health).await
                } else {
                    health::observe(&cfg.health).await
                };
                let d = gate::decide(
                    false,
                    &obs,
                    started.elapsed(),
                    timeout,
                    cfg.health.on_unhealthy,
                );
                if d == HealthDecision::Wait {
                    if logged.as_ref() != Some(&obs.failing) {
                        tracing::info!(failing = ?obs.failing, "health gate: waiting");
                        logged = Some(obs.failing.clone());
                    } else {
                        tracing::debug!(failing = ?obs.failing, "health gate: still waiting");
                    }
                    tokio::time::sleep(Duration::from_secs(cfg.health.interval_secs.max(1))).await;
                    continue;
                }
                let _ = tx.send(Msg::Health(d));
                return;
            }
        });
        Ok(())
    }

    async fn on_gate(&mut self, decision: HealthDecision) {
        if !matches!(
            decision,
            HealthDecision::MarkGood | HealthDecision::AlreadyGood
        ) {
            self.handle(Input::HealthGateEnded).await;
        }
        match decision {
            HealthDecision::MarkGood | HealthDecision::AlreadyGood => {
                match self.boot.mark_booted_good() {
                    Ok(()) => {
                        tracing::info!(slot = %self.boot.booted(), "health gate passed: boot marked good");
                        self.handle(Input::BootMarkedGood).await;
                    }
                    Err(e) => {
                        self.metrics.failure("health");
                        tracing::error!(error = %e, "cannot mark the boot good");
                        self.handle(Input::HealthGateEnded).await;
                    }
                }
            }
            HealthDecision::Reboot { reason } => {
                self.metrics.failure("health");
                tracing::error!(%reason, "health gate failed: rebooting so the previous slot boots");
                let timeout = Duration::from_secs(self.cfg.health.check_timeout_secs.max(1));
                if let Err(e) = health::run(&self.cfg.reboot_command, timeout).await {
                    tracing::error!(error = %e, "reboot command failed");
                }
            }
            HealthDecision::ReportOnly { reason } => {
                self.metrics.failure("health");
                tracing::error!(%reason, "health gate failed; not marking the boot good (report-only)");
            }
            HealthDecision::Wait => {}
        }
    }

    async fn check_due(&mut self, interactive: bool) {
        self.handle(Input::CheckDue { interactive }).await;
    }

    /// update_engine's flag bits for an error code of the current attempt: resumed download,
    /// non-production update server.
    fn error_flags(&self) -> ErrorFlags {
        let (_, url) = self.server_url();
        ErrorFlags {
            resumed: self.install.as_ref().is_some_and(|i| i.resumed()),
            test_omaha_url: url.is_some_and(|u| u != fastpatch_update_conf::DEFAULT_SERVER),
        }
    }

    /// Steps the machine with `input` and everything its actions produce synchronously.
    async fn handle(&mut self, input: Input) {
        self.queue.push_back(input);
        while let Some(mut input) = self.queue.pop_front() {
            if let Input::Failed { code } = input {
                input = Input::Failed {
                    code: code.with_flags(self.error_flags()),
                };
            }
            tracing::debug!(?input, status = %self.engine.status(), "input");
            let before = self.engine.status();
            let actions = self.engine.step(input);
            let after = self.engine.status();
            if after != before {
                // One line per change, for operators and for harnesses watching a serial log.
                tracing::info!("status {before} -> {after}");
            }
            self.perform(actions).await;
        }
    }

    /// `reboot_after_update`: waits until the events queued so far reached the server (or
    /// failed to), then runs the reboot command.
    fn reboot_when_reported(&self) {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let _ = self.reporter.send(ReportJob::Flush(done_tx));
        let argv = self.cfg.reboot_command.clone();
        let timeout = Duration::from_secs(self.cfg.health.check_timeout_secs.max(1));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(120), done_rx).await;
            tracing::info!(command = ?argv, "update staged: rebooting (reboot_after_update)");
            if let Err(e) = health::run(&argv, timeout).await {
                tracing::error!(error = %e, "reboot command failed");
            }
        });
    }

    async fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            tracing::debug!(?action, "action");
            match action {
                Action::SendUpdateCheck {
                    events,
                    interactive,
                } => self.send_check(RequestKind::Check { interactive }, events),
                Action::SendPing => self.send_check(RequestKind::Ping, Vec::new()),
                Action::SendEvents(events) => self.send_events(events),
                Action::StartInstall(offer) => self.start_install(offer),
                Action::FinishInstall => match self.install.as_mut() {
                    Some(i) => i.finish(),
                    None => self.queue.push_back(Input::Failed {
                        code: ErrorCode::ERROR,
                    }),
                },
                Action::PlaceExtensions(offer) => self.place_extensions(offer),
                Action::PruneExtensions { keep } => {
                    extensions::prune_logged(&self.cfg.extension_layout(), &keep)
                }
                Action::DropInstall => {
                    self.install = None;
                    self.install_rx = None;
                }
                Action::RebootWhenReported => self.reboot_when_reported(),
                Action::StageSlot => {
                    let passive = self.boot.booted().other();
                    match self.boot.stage(passive) {
                        Ok(()) => {
                            tracing::info!(slot = %passive, "slot staged for the next boot");
                            self.queue.push_back(Input::Staged);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot stage the slot");
                            self.metrics.failure("install");
                            self.queue.push_back(Input::Failed {
                                code: ErrorCode::ERROR,
                            });
                        }
                    }
                }
                Action::UnstageSlot => {
                    // Re-prioritizing the booted (good) slot puts it above the staged one, so
                    // the boot chooser picks it again; the staged slot keeps its try but loses.
                    if let Err(e) = self.boot.mark_booted_good() {
                        tracing::error!(error = %e, "cannot unstage the update");
                    }
                }
                Action::Persist => {
                    if let Err(e) =
                        crate::persist::save(&self.cfg.state_file, self.engine.durable())
                    {
                        tracing::error!(error = %e, "cannot save the engine state");
                        // Whatever was to follow relied on the state being durable.
                        self.queue.push_back(Input::Failed {
                            code: ErrorCode::ERROR,
                        });
                        return;
                    }
                }
                Action::ScheduleCheck(delay) => {
                    let d = schedule::next_delay(&self.cfg.schedule, delay, unit_random());
                    tracing::info!(?delay, in_secs = d.as_secs(), "next update check scheduled");
                    self.next_check = Some(Instant::now() + d);
                }
                Action::PublishStatus => self.publish().await,
            }
        }
    }

    async fn publish(&mut self) {
        let snap = StatusSnapshot::of(&self.engine, self.last_checked);
        self.metrics.set_status(snap.current_operation);
        if let Ok(mut s) = self.snapshot.lock() {
            *s = snap.clone();
        }
        let now = Instant::now();
        let elapsed = now - self.last_signal;
        if self.throttle.should_emit(&snap, elapsed) {
            self.last_signal = now;
            if let Some(conn) = &self.conn {
                if let Err(e) = dbus::emit_status(conn, &snap).await {
                    tracing::warn!(error = %e, "cannot emit StatusUpdate");
                }
            }
        }
    }
}

/// The engine's HTTP client. Without system CA certificates (no ca-certificates on a minimal
/// OS) it still starts, with no trusted roots, and says so: plain-HTTP servers work, an
/// https:// server or payload URL fails verification with a clear error.
fn http_client(cfg: &DaemonConfig) -> Result<reqwest::Client> {
    fastpatch_fetch::client::with_system_roots("update engine", || {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(cfg.download.connect_timeout_secs))
            .read_timeout(Duration::from_secs(cfg.download.stall_timeout_secs))
            .user_agent(omaha::UPDATER_VERSION)
    })
    .context("building the HTTP client")
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn recv_dbus(rx: &mut Option<mpsc::Receiver<DbusRequest>>) -> Option<DbusRequest> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_opt(rx: &mut Option<mpsc::UnboundedReceiver<Input>>) -> Option<Input> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
