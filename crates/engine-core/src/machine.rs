//! The engine's one decision point: `Engine::step(input) -> Vec<Action>`. Pure: no I/O, no
//! clock, no randomness. The daemon performs the actions and feeds the outcomes back in.
//!
//! ```text
//!  IDLE ─CheckDue─► CHECKING ─update─► UPDATE_AVAILABLE ─progress─► DOWNLOADING ─finished─►
//!  VERIFYING ─verified─► FINALIZING ─extensions placed─► (stage) ─staged─► UPDATED_NEED_REBOOT
//!  (pings only from here)
//!  any busy state ─Failed─► REPORTING_ERROR_EVENT ─ErrorReported─► IDLE
//! ```

use serde::{Deserialize, Serialize};

use crate::report::{ErrorCode, Event};
use crate::status::UpdateStatus;

/// An update the server offered, validated by the omaha crate (size > 0, SHA-256 decoded), with
/// the extra files (system extensions) the daemon places before staging.
pub use fastpatch_omaha::UpdateOffer;

/// The server's answer to an update check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckReply {
    NoUpdate,
    Update(UpdateOffer),
}

/// When the next check should happen (the schedule module turns this into a delay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckDelay {
    /// First check after start.
    Initial,
    Regular,
    /// After `failures` consecutive server errors.
    Backoff {
        failures: u32,
    },
    /// The server's PollInterval, in seconds.
    Server {
        seconds: u64,
    },
    /// The health gate of this boot is still running: no install may start before the boot
    /// is marked good, so a scheduled check waits (an interactive one goes ahead).
    HealthGate,
    /// Soon, because reports are waiting (3/2 after a good boot, 44 after a rollback): they
    /// ride on this check instead of waiting for the regular schedule.
    Report,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The timer fired, or someone asked (D-Bus AttemptUpdate: `interactive`).
    CheckDue { interactive: bool },
    CheckAnswered {
        reply: CheckReply,
        poll_interval: Option<u64>,
    },
    /// The check failed; `server_error` for 5xx and timeouts (which back off).
    CheckFailed { server_error: bool },
    /// Payload bytes received and written so far.
    DownloadProgress { received: u64 },
    /// Every byte arrived and every operation's hash matched.
    DownloadFinished,
    /// Read-back, partition hash and signature all verified.
    InstallVerified,
    /// Every system extension this machine has enabled is in place for the new version.
    ExtensionsPlaced,
    /// The slot is staged in the partition table.
    Staged,
    /// The attempt failed.
    Failed { code: ErrorCode },
    /// The error event went out (or gave up trying).
    ErrorReported,
    /// D-Bus ResetStatus.
    ResetStatus,
    /// The health gate marked the running boot good.
    BootMarkedGood,
    /// This boot is not marked good yet: its health gate is running.
    HealthGateStarted,
    /// The health gate ended without marking the boot good (it reboots, or reports only).
    HealthGateEnded,
}

/// Something the daemon must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A request with ping + updatecheck and these events.
    SendUpdateCheck {
        events: Vec<Event>,
        interactive: bool,
    },
    /// A ping-only request (while a staged update waits for its reboot).
    SendPing,
    /// An event-only request. Never empty.
    SendEvents(Vec<Event>),
    /// Download and install the offer onto the passive slot (resuming if possible).
    StartInstall(UpdateOffer),
    /// Verify the written slot: read back, partition hash, signature.
    FinishInstall,
    /// Place the system extensions this machine has enabled for the offer's version (fetch,
    /// verify, unpack, sync); answer `ExtensionsPlaced` or `Failed`.
    PlaceExtensions(UpdateOffer),
    /// Remove extension images of every version but these (after a good boot: the running
    /// version and the fallback's).
    PruneExtensions {
        keep: Vec<String>,
    },
    /// The attempt is over (staged or failed): stop its download and installer and drop
    /// their pending reports.
    DropInstall,
    /// Run the reboot command once the events queued so far reached the server (or failed
    /// to): `reboot_after_update`.
    RebootWhenReported,
    /// Stage the passive slot in the partition table.
    StageSlot,
    /// Undo a staged slot (ResetStatus while an update waits for reboot).
    UnstageSlot,
    /// The durable state changed: write it (atomically) before going on.
    Persist,
    ScheduleCheck(CheckDelay),
    /// The status changed: tell D-Bus listeners.
    PublishStatus,
}

/// An update that has been (or is being) staged, remembered across reboots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedUpdate {
    pub version: String,
    pub from_version: String,
    /// The boot in which it was staged.
    pub boot_id: String,
    /// False between deciding to stage and the partition table write completing.
    pub gpt_staged: bool,
}

/// What must survive a restart or reboot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableState {
    /// The first version ever installed (Omaha `alephversion`).
    pub aleph_version: Option<String>,
    pub staged: Option<StagedUpdate>,
    /// Events the server has not acknowledged yet (sent with the next check).
    pub pending_events: Vec<Event>,
}

/// Facts about this boot that the daemon reads at start.
#[derive(Debug, Clone)]
pub struct BootFacts {
    pub current_version: String,
    pub boot_id: String,
    /// Whether the passive slot is staged in the partition table right now.
    pub passive_slot_staged: bool,
    /// Whether this boot's chooser refused the passive slot (`fastpatch.refused=`).
    pub passive_slot_refused: bool,
}

/// The engine's whole in-memory state.
#[derive(Debug, Clone, PartialEq)]
pub struct Engine {
    pub status: UpdateStatus,
    /// 0.0 to 1.0 during a download.
    pub progress: f64,
    pub new_version: String,
    pub new_size: u64,
    pub current_version: String,
    pub boot_id: String,
    pub offer: Option<UpdateOffer>,
    /// Consecutive server errors (for backoff).
    pub server_failures: u32,
    /// This boot runs a freshly updated version that is not marked good yet.
    pub awaiting_good_boot: bool,
    pub durable: DurableState,
    /// Reboot by itself once a staged update's events reached the server (a machine without
    /// locksmithd). Set by the daemon from its config after [`Engine::start`].
    pub reboot_after_update: bool,
    /// The health gate of this boot is running (scheduled checks wait for it).
    pub health_gate_running: bool,
}

impl Engine {
    /// The engine at daemon start, from what was persisted and what this boot looks like.
    pub fn start(durable: DurableState, boot: BootFacts) -> (Engine, Vec<Action>) {
        let mut e = Engine {
            status: UpdateStatus::Idle,
            progress: 0.0,
            new_version: String::new(),
            new_size: 0,
            current_version: boot.current_version.clone(),
            boot_id: boot.boot_id.clone(),
            offer: None,
            server_failures: 0,
            awaiting_good_boot: false,
            durable,
            reboot_after_update: false,
            health_gate_running: false,
        };
        let before = e.durable.clone();
        if e.durable.aleph_version.is_none() {
            e.durable.aleph_version = Some(boot.current_version.clone());
        }
        if let Some(staged) = e.durable.staged.clone() {
            if staged.boot_id == boot.boot_id {
                // The daemon restarted without a reboot.
                if boot.passive_slot_staged {
                    e.status = UpdateStatus::UpdatedNeedReboot;
                    e.new_version = staged.version.clone();
                    e.progress = 1.0;
                    if let Some(s) = e.durable.staged.as_mut() {
                        s.gpt_staged = true;
                    }
                } else {
                    // Decided to stage, but the table write never happened: try again later.
                    e.durable.staged = None;
                }
            } else if staged.version == boot.current_version {
                // Rebooted into the new version: report once the health gate passes.
                e.awaiting_good_boot = true;
            } else {
                if boot.passive_slot_refused {
                    // The chooser refused it before it ran, even if the table write was not
                    // known to have happened.
                    e.durable
                        .pending_events
                        .push(Event::slot_refused(&staged.version));
                } else if staged.gpt_staged {
                    e.durable
                        .pending_events
                        .push(Event::rolled_back(&staged.version));
                }
                // Not staged for sure: nothing booted it, so there is nothing to report.
                e.durable.staged = None;
            }
        }
        let mut actions = Vec::new();
        if e.durable != before {
            actions.push(Action::Persist);
        }
        // Waiting reports (a rollback found just now, or left over from the last run) go out
        // early; NEED_REBOOT sends only pings, so they wait for the reboot there.
        let delay = if e.durable.pending_events.is_empty() || e.status != UpdateStatus::Idle {
            CheckDelay::Initial
        } else {
            CheckDelay::Report
        };
        actions.push(Action::ScheduleCheck(delay));
        actions.push(Action::PublishStatus);
        (e, actions)
    }

    /// The one place that decides what happens next: which input counts in which state. Each
    /// transition is one method below.
    pub fn step(&mut self, input: Input) -> Vec<Action> {
        use UpdateStatus as S;
        match (self.status, input) {
            (S::Idle, Input::CheckDue { interactive: false }) if self.health_gate_running => {
                vec![Action::ScheduleCheck(CheckDelay::HealthGate)]
            }
            (S::Idle, Input::CheckDue { interactive }) => self.start_check(interactive),
            (S::UpdatedNeedReboot, Input::CheckDue { .. }) => vec![Action::SendPing],
            (_, Input::CheckDue { .. }) => Vec::new(), // busy: the running attempt goes on

            (
                S::CheckingForUpdate,
                Input::CheckAnswered {
                    reply,
                    poll_interval,
                },
            ) => self.check_answered(reply, poll_interval),
            (S::UpdatedNeedReboot, Input::CheckAnswered { poll_interval, .. }) => {
                self.ping_answered(poll_interval)
            }
            (S::CheckingForUpdate | S::UpdatedNeedReboot, Input::CheckFailed { server_error }) => {
                self.check_failed(server_error)
            }

            (S::UpdateAvailable | S::Downloading, Input::DownloadProgress { received }) => {
                self.download_progress(received)
            }
            (S::UpdateAvailable | S::Downloading, Input::DownloadFinished) => {
                self.download_finished()
            }
            (S::Verifying, Input::InstallVerified) => self.install_verified(),
            (S::Finalizing, Input::ExtensionsPlaced) => self.stage(),
            (S::Finalizing, Input::Staged) if self.durable.staged.is_some() => self.staged(),

            (
                S::CheckingForUpdate
                | S::UpdateAvailable
                | S::Downloading
                | S::Verifying
                | S::Finalizing,
                Input::Failed { code },
            ) => self.attempt_failed(code),
            (S::ReportingErrorEvent, Input::ErrorReported) => {
                self.status = S::Idle;
                vec![Action::PublishStatus]
            }

            (S::Idle | S::ReportingErrorEvent, Input::ResetStatus) => {
                self.status = S::Idle;
                self.clear_attempt();
                vec![Action::PublishStatus]
            }
            (S::UpdatedNeedReboot, Input::ResetStatus) => self.unstage(),

            (_, Input::HealthGateStarted) => {
                self.health_gate_running = true;
                Vec::new()
            }
            (_, Input::HealthGateEnded) => {
                self.health_gate_running = false;
                Vec::new()
            }
            (_, Input::BootMarkedGood) => self.boot_marked_good(),

            // Anything else is a stale or out-of-order report: ignore it, loudly.
            (status, input) => {
                tracing::debug!(?status, ?input, "input ignored in this state");
                Vec::new()
            }
        }
    }

    /// Idle → checking: the request carries the events the server has not acknowledged.
    fn start_check(&mut self, interactive: bool) -> Vec<Action> {
        self.status = UpdateStatus::CheckingForUpdate;
        vec![
            Action::SendUpdateCheck {
                events: self.durable.pending_events.clone(),
                interactive,
            },
            Action::PublishStatus,
        ]
    }

    /// The server answered a check: its events are acknowledged; an update starts installing.
    fn check_answered(&mut self, reply: CheckReply, poll_interval: Option<u64>) -> Vec<Action> {
        self.server_failures = 0;
        let mut actions = Vec::new();
        if !self.durable.pending_events.is_empty() {
            self.durable.pending_events.clear();
            actions.push(Action::Persist);
        }
        let next = poll_interval.map_or(CheckDelay::Regular, |seconds| CheckDelay::Server {
            seconds,
        });
        match reply {
            CheckReply::Update(offer) if offer.version != self.current_version => {
                self.status = UpdateStatus::UpdateAvailable;
                self.new_version = offer.version.clone();
                self.new_size = offer.size;
                self.progress = 0.0;
                self.offer = Some(offer.clone());
                actions.extend([
                    Action::SendEvents(vec![Event::download_started()]),
                    Action::StartInstall(offer),
                    Action::PublishStatus,
                    Action::ScheduleCheck(next),
                ]);
            }
            _ => {
                self.status = UpdateStatus::Idle;
                actions.extend([Action::PublishStatus, Action::ScheduleCheck(next)]);
            }
        }
        actions
    }

    /// A ping while an update waits for its reboot was answered.
    fn ping_answered(&mut self, poll_interval: Option<u64>) -> Vec<Action> {
        self.server_failures = 0;
        vec![Action::ScheduleCheck(
            poll_interval.map_or(CheckDelay::Regular, |seconds| CheckDelay::Server {
                seconds,
            }),
        )]
    }

    /// A check or ping failed: server errors back off.
    fn check_failed(&mut self, server_error: bool) -> Vec<Action> {
        if self.status == UpdateStatus::CheckingForUpdate {
            self.status = UpdateStatus::Idle;
        }
        let delay = if server_error {
            self.server_failures = self.server_failures.saturating_add(1);
            CheckDelay::Backoff {
                failures: self.server_failures,
            }
        } else {
            CheckDelay::Regular
        };
        vec![Action::PublishStatus, Action::ScheduleCheck(delay)]
    }

    fn download_progress(&mut self, received: u64) -> Vec<Action> {
        self.status = UpdateStatus::Downloading;
        self.progress = if self.new_size == 0 {
            0.0
        } else {
            (received as f64 / self.new_size as f64).min(1.0)
        };
        vec![Action::PublishStatus]
    }

    /// Every byte arrived: the installer verifies the slot.
    fn download_finished(&mut self) -> Vec<Action> {
        self.status = UpdateStatus::Verifying;
        self.progress = 1.0;
        vec![
            Action::SendEvents(vec![Event::download_finished()]),
            Action::FinishInstall,
            Action::PublishStatus,
        ]
    }

    /// The slot verified: the enabled system extensions are placed before anything is staged.
    fn install_verified(&mut self) -> Vec<Action> {
        self.status = UpdateStatus::Finalizing;
        match self.offer.clone() {
            Some(offer) => vec![Action::PlaceExtensions(offer), Action::PublishStatus],
            // No offer to take extensions from (cannot happen): stage as before.
            None => self.stage(),
        }
    }

    /// The table says staged: the update waits for its reboot.
    fn staged(&mut self) -> Vec<Action> {
        self.status = UpdateStatus::UpdatedNeedReboot;
        if let Some(s) = self.durable.staged.as_mut() {
            s.gpt_staged = true;
        }
        let mut actions = vec![
            Action::Persist,
            Action::DropInstall,
            Action::SendEvents(vec![Event::installed()]),
            Action::PublishStatus,
        ];
        if self.reboot_after_update {
            // After the 3/1 above: the reboot waits for it to reach the server.
            actions.push(Action::RebootWhenReported);
        }
        actions
    }

    /// The attempt failed: an unfinished stage intent is dropped, the error is reported.
    fn attempt_failed(&mut self, code: ErrorCode) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.durable.staged.as_ref().is_some_and(|s| !s.gpt_staged) {
            self.durable.staged = None;
            actions.push(Action::Persist);
        }
        self.status = UpdateStatus::ReportingErrorEvent;
        self.offer = None;
        self.progress = 0.0;
        actions.extend([
            Action::DropInstall,
            Action::SendEvents(vec![Event::error(code)]),
            Action::PublishStatus,
            Action::ScheduleCheck(CheckDelay::Regular),
        ]);
        actions
    }

    /// ResetStatus while an update waits for its reboot: the booted slot goes back on top.
    fn unstage(&mut self) -> Vec<Action> {
        self.status = UpdateStatus::Idle;
        self.clear_attempt();
        self.durable.staged = None;
        vec![Action::UnstageSlot, Action::Persist, Action::PublishStatus]
    }

    /// The health gate passed: after an update, 3/2 goes out soon and old extensions go.
    fn boot_marked_good(&mut self) -> Vec<Action> {
        self.health_gate_running = false;
        if !self.awaiting_good_boot {
            return Vec::new();
        }
        self.awaiting_good_boot = false;
        let Some(staged) = self.durable.staged.take() else {
            return vec![Action::Persist];
        };
        self.durable
            .pending_events
            .push(Event::update_complete(&staged.from_version));
        let mut actions = vec![
            Action::Persist,
            // The old version's extensions are kept until now; the fallback keeps its own.
            Action::PruneExtensions {
                keep: vec![staged.version.clone(), staged.from_version.clone()],
            },
        ];
        if self.status == UpdateStatus::Idle {
            // Tell the server soon; a check already under way carries it anyway.
            actions.push(Action::ScheduleCheck(CheckDelay::Report));
        }
        actions
    }

    /// Stages the new slot: the intent is remembered before the table is touched, so a
    /// restart knows.
    fn stage(&mut self) -> Vec<Action> {
        self.durable.staged = Some(StagedUpdate {
            version: self.new_version.clone(),
            from_version: self.current_version.clone(),
            boot_id: self.boot_id.clone(),
            gpt_staged: false,
        });
        vec![Action::Persist, Action::StageSlot, Action::PublishStatus]
    }

    fn clear_attempt(&mut self) {
        self.offer = None;
        self.progress = 0.0;
        self.new_version.clear();
        self.new_size = 0;
    }
}
