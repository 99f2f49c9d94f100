//! The engine's one decision point: `Engine::step(input) -> Vec<Action>`. Pure: no I/O, no
//! clock, no randomness. The daemon performs the actions and feeds the outcomes back in. The
//! attempt's data lives in the [`State`] enum's variants (`state.rs`); the wire status is
//! derived from it.
//!
//! ```text
//!  IDLE ─CheckDue─► CHECKING ─update─► UPDATE_AVAILABLE ─progress─► DOWNLOADING ─finished─►
//!  VERIFYING ─verified─► FINALIZING ─extensions placed─► (stage) ─staged─► UPDATED_NEED_REBOOT
//!  (pings only from here)
//!  any busy state ─Failed─► REPORTING_ERROR_EVENT ─ErrorReported─► IDLE
//! ```

use serde::{Deserialize, Serialize};

use crate::report::{ErrorCode, Event};
use crate::state::{Offered, Phase, State, ThisBoot};
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

/// The engine's whole in-memory state. The attempt's data lives in [`State`]'s variants; the
/// rest is this boot, what must survive a restart, and the server's error count.
#[derive(Debug, Clone, PartialEq)]
pub struct Engine {
    state: State,
    this_boot: ThisBoot,
    durable: DurableState,
    /// NEW_VERSION / NEW_SIZE for GetStatus.
    offered: Option<Offered>,
    /// Consecutive server errors (for backoff).
    server_failures: u32,
    /// Reboot by itself once a staged update's events reached the server (a machine without
    /// locksmithd).
    reboot_after_update: bool,
}

impl Engine {
    /// The engine at daemon start, from what was persisted and what this boot looks like.
    pub fn start(durable: DurableState, boot: BootFacts) -> (Engine, Vec<Action>) {
        let mut e = Engine {
            state: State::Idle,
            this_boot: ThisBoot {
                version: boot.current_version.clone(),
                id: boot.boot_id.clone(),
                awaiting_good: false,
                gate_running: false,
            },
            durable,
            offered: None,
            server_failures: 0,
            reboot_after_update: false,
        };
        let before = e.durable.clone();
        if e.durable.aleph_version.is_none() {
            e.durable.aleph_version = Some(boot.current_version.clone());
        }
        if let Some(staged) = e.durable.staged.clone() {
            e.resume_staged(staged, &boot);
        }
        let mut actions = Vec::new();
        if e.durable != before {
            actions.push(Action::Persist);
        }
        // Waiting reports (a rollback found just now, or left over from the last run) go out
        // early; NEED_REBOOT sends only pings, so they wait for the reboot there.
        let delay = if e.durable.pending_events.is_empty() || e.state != State::Idle {
            CheckDelay::Initial
        } else {
            CheckDelay::Report
        };
        actions.push(Action::ScheduleCheck(delay));
        actions.push(Action::PublishStatus);
        (e, actions)
    }

    /// At start, with an update staged by an earlier run: where did it get to?
    fn resume_staged(&mut self, staged: StagedUpdate, boot: &BootFacts) {
        if staged.boot_id == boot.boot_id {
            // The daemon restarted without a reboot.
            if boot.passive_slot_staged {
                self.state = State::NeedReboot;
                self.offered = Some(Offered {
                    version: staged.version,
                    size: 0,
                });
                if let Some(s) = self.durable.staged.as_mut() {
                    s.gpt_staged = true;
                }
            } else {
                // Decided to stage, but the table write never happened: try again later.
                self.durable.staged = None;
            }
        } else if staged.version == boot.current_version {
            // Rebooted into the new version: report once the health gate passes.
            self.this_boot.awaiting_good = true;
        } else {
            if boot.passive_slot_refused {
                // The chooser refused it before it ran, even if the table write was not known
                // to have happened.
                self.durable
                    .pending_events
                    .push(Event::slot_refused(&staged.version));
            } else if staged.gpt_staged {
                self.durable
                    .pending_events
                    .push(Event::rolled_back(&staged.version));
            }
            // Not staged for sure: nothing booted it, so there is nothing to report.
            self.durable.staged = None;
        }
    }

    /// From the daemon's config: reboot by itself once a staged update is reported.
    pub fn set_reboot_after_update(&mut self, on: bool) {
        self.reboot_after_update = on;
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The wire status of the current state.
    pub fn status(&self) -> UpdateStatus {
        self.state.status()
    }

    pub fn progress(&self) -> f64 {
        self.state.progress()
    }

    /// The last offer (NEW_VERSION / NEW_SIZE), if any since start or the last ResetStatus.
    pub fn offered(&self) -> Option<&Offered> {
        self.offered.as_ref()
    }

    /// What the daemon writes to the state file on [`Action::Persist`].
    pub fn durable(&self) -> &DurableState {
        &self.durable
    }

    /// This boot runs a freshly updated version whose good mark is still to come.
    pub fn awaiting_good_boot(&self) -> bool {
        self.this_boot.awaiting_good
    }

    pub fn health_gate_running(&self) -> bool {
        self.this_boot.gate_running
    }

    pub fn server_failures(&self) -> u32 {
        self.server_failures
    }

    /// The one place that decides what happens next: which input counts in which state.
    pub fn step(&mut self, input: Input) -> Vec<Action> {
        let state = std::mem::replace(&mut self.state, State::Idle);
        let (next, actions) = self.transition(state, input);
        self.state = next;
        actions
    }

    /// Every arm names the next state; each transition with more to it is one method below.
    fn transition(&mut self, state: State, input: Input) -> (State, Vec<Action>) {
        use Phase as P;
        use State as St;
        match (state, input) {
            // This boot's health gate, whatever the attempt is doing.
            (s, Input::HealthGateStarted) => {
                self.this_boot.gate_running = true;
                (s, Vec::new())
            }
            (s, Input::HealthGateEnded) => {
                self.this_boot.gate_running = false;
                (s, Vec::new())
            }
            (s, Input::BootMarkedGood) => {
                let actions = self.boot_marked_good(&s);
                (s, actions)
            }

            (St::Idle, Input::CheckDue { interactive: false }) if self.this_boot.gate_running => (
                St::Idle,
                vec![Action::ScheduleCheck(CheckDelay::HealthGate)],
            ),
            (St::Idle, Input::CheckDue { interactive }) => self.start_check(interactive),
            (St::NeedReboot, Input::CheckDue { .. }) => (St::NeedReboot, vec![Action::SendPing]),
            // Busy: the running attempt goes on.
            (busy, Input::CheckDue { .. }) => (busy, Vec::new()),

            (
                St::Checking,
                Input::CheckAnswered {
                    reply,
                    poll_interval,
                },
            ) => self.check_answered(reply, poll_interval),
            (St::NeedReboot, Input::CheckAnswered { poll_interval, .. }) => {
                (St::NeedReboot, self.ping_answered(poll_interval))
            }
            (St::Checking, Input::CheckFailed { server_error }) => {
                (St::Idle, self.check_failed(server_error))
            }
            (St::NeedReboot, Input::CheckFailed { server_error }) => {
                (St::NeedReboot, self.check_failed(server_error))
            }

            (
                St::Installing {
                    offer,
                    phase: P::Started | P::Downloading { .. },
                },
                Input::DownloadProgress { received },
            ) => (
                St::Installing {
                    offer,
                    phase: P::Downloading { received },
                },
                vec![Action::PublishStatus],
            ),
            (
                St::Installing {
                    offer,
                    phase: P::Started | P::Downloading { .. },
                },
                Input::DownloadFinished,
            ) => download_finished(offer),
            (
                St::Installing {
                    offer,
                    phase: P::Verifying,
                },
                Input::InstallVerified,
            ) => install_verified(offer),
            (
                St::Installing {
                    offer,
                    phase: P::PlacingExtensions,
                },
                Input::ExtensionsPlaced,
            ) => self.stage(offer),
            (
                St::Installing {
                    phase: P::Staging, ..
                },
                Input::Staged,
            ) => self.staged(),

            (St::Checking | St::Installing { .. }, Input::Failed { code }) => {
                self.attempt_failed(code)
            }
            (St::ReportingError, Input::ErrorReported) => (St::Idle, vec![Action::PublishStatus]),

            (St::Idle | St::ReportingError, Input::ResetStatus) => {
                self.offered = None;
                (St::Idle, vec![Action::PublishStatus])
            }
            (St::NeedReboot, Input::ResetStatus) => self.unstage(),

            // Anything else is a stale or out-of-order report: ignore it, loudly.
            (state, input) => {
                tracing::debug!(?state, ?input, "input ignored in this state");
                (state, Vec::new())
            }
        }
    }

    /// Idle → checking: the request carries the events the server has not acknowledged.
    fn start_check(&mut self, interactive: bool) -> (State, Vec<Action>) {
        let actions = vec![
            Action::SendUpdateCheck {
                events: self.durable.pending_events.clone(),
                interactive,
            },
            Action::PublishStatus,
        ];
        (State::Checking, actions)
    }

    /// The server answered a check: its events are acknowledged; an update starts installing.
    fn check_answered(
        &mut self,
        reply: CheckReply,
        poll_interval: Option<u64>,
    ) -> (State, Vec<Action>) {
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
            CheckReply::Update(offer) if offer.version != self.this_boot.version => {
                self.offered = Some(Offered {
                    version: offer.version.clone(),
                    size: offer.size,
                });
                actions.extend([
                    Action::SendEvents(vec![Event::download_started()]),
                    Action::StartInstall(offer.clone()),
                    Action::PublishStatus,
                    Action::ScheduleCheck(next),
                ]);
                let phase = Phase::Started;
                (State::Installing { offer, phase }, actions)
            }
            _ => {
                actions.extend([Action::PublishStatus, Action::ScheduleCheck(next)]);
                (State::Idle, actions)
            }
        }
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

    /// Stages the new slot: the intent is remembered before the table is touched, so a
    /// restart knows.
    fn stage(&mut self, offer: UpdateOffer) -> (State, Vec<Action>) {
        self.durable.staged = Some(StagedUpdate {
            version: offer.version.clone(),
            from_version: self.this_boot.version.clone(),
            boot_id: self.this_boot.id.clone(),
            gpt_staged: false,
        });
        let actions = vec![Action::Persist, Action::StageSlot, Action::PublishStatus];
        let phase = Phase::Staging;
        (State::Installing { offer, phase }, actions)
    }

    /// The table says staged: the update waits for its reboot.
    fn staged(&mut self) -> (State, Vec<Action>) {
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
        (State::NeedReboot, actions)
    }

    /// The attempt failed: an unfinished stage intent is dropped, the error is reported.
    fn attempt_failed(&mut self, code: ErrorCode) -> (State, Vec<Action>) {
        let mut actions = Vec::new();
        if self.durable.staged.as_ref().is_some_and(|s| !s.gpt_staged) {
            self.durable.staged = None;
            actions.push(Action::Persist);
        }
        actions.extend([
            Action::DropInstall,
            Action::SendEvents(vec![Event::error(code)]),
            Action::PublishStatus,
            Action::ScheduleCheck(CheckDelay::Regular),
        ]);
        (State::ReportingError, actions)
    }

    /// ResetStatus while an update waits for its reboot: the booted slot goes back on top.
    fn unstage(&mut self) -> (State, Vec<Action>) {
        self.offered = None;
        self.durable.staged = None;
        let actions = vec![Action::UnstageSlot, Action::Persist, Action::PublishStatus];
        (State::Idle, actions)
    }

    /// The health gate passed: after an update, 3/2 goes out soon and old extensions go.
    fn boot_marked_good(&mut self, state: &State) -> Vec<Action> {
        self.this_boot.gate_running = false;
        if !self.this_boot.awaiting_good {
            return Vec::new();
        }
        self.this_boot.awaiting_good = false;
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
                keep: vec![staged.version, staged.from_version],
            },
        ];
        if *state == State::Idle {
            // Tell the server soon; a check already under way carries it anyway.
            actions.push(Action::ScheduleCheck(CheckDelay::Report));
        }
        actions
    }
}

/// Every byte arrived: the installer verifies the slot.
fn download_finished(offer: UpdateOffer) -> (State, Vec<Action>) {
    let actions = vec![
        Action::SendEvents(vec![Event::download_finished()]),
        Action::FinishInstall,
        Action::PublishStatus,
    ];
    let phase = Phase::Verifying;
    (State::Installing { offer, phase }, actions)
}

/// The slot verified: the enabled system extensions are placed before anything is staged.
fn install_verified(offer: UpdateOffer) -> (State, Vec<Action>) {
    let actions = vec![
        Action::PlaceExtensions(offer.clone()),
        Action::PublishStatus,
    ];
    let phase = Phase::PlacingExtensions;
    (State::Installing { offer, phase }, actions)
}
