//! Where the engine is: one enum, with the data each state needs inside its variant. The wire
//! status that D-Bus and the metrics show ([`UpdateStatus`]) is derived from it, never stored.

use fastpatch_omaha::UpdateOffer;

use crate::status::UpdateStatus;

/// Where the current update attempt is.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Nothing under way; the next check is scheduled.
    Idle,
    /// An update check is on its way to the server.
    Checking,
    /// The server offered `offer`; it is being installed onto the passive slot.
    Installing { offer: UpdateOffer, phase: Phase },
    /// The attempt failed; its error event is on its way.
    ReportingError,
    /// A staged update waits for its reboot (the durable state records it, table write done).
    NeedReboot,
}

/// The steps of an install, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Offered; no payload byte written yet.
    Started,
    /// `received` payload bytes written so far.
    Downloading { received: u64 },
    /// Every byte arrived: read-back, partition hash and signature.
    Verifying,
    /// The slot verified: the enabled system extensions are being placed.
    PlacingExtensions,
    /// The stage intent is durable; the partition table is being written.
    Staging,
}

impl State {
    /// update_engine's status for this state.
    pub fn status(&self) -> UpdateStatus {
        match self {
            State::Idle => UpdateStatus::Idle,
            State::Checking => UpdateStatus::CheckingForUpdate,
            State::Installing { phase, .. } => match phase {
                Phase::Started => UpdateStatus::UpdateAvailable,
                Phase::Downloading { .. } => UpdateStatus::Downloading,
                Phase::Verifying => UpdateStatus::Verifying,
                Phase::PlacingExtensions | Phase::Staging => UpdateStatus::Finalizing,
            },
            State::ReportingError => UpdateStatus::ReportingErrorEvent,
            State::NeedReboot => UpdateStatus::UpdatedNeedReboot,
        }
    }

    /// 0.0 to 1.0: the share of the payload written (1.0 from the end of the download on).
    pub fn progress(&self) -> f64 {
        match self {
            State::Installing { offer, phase } => match phase {
                Phase::Started => 0.0,
                Phase::Downloading { received } if offer.size > 0 => {
                    (*received as f64 / offer.size as f64).min(1.0)
                }
                Phase::Downloading { .. } => 0.0,
                Phase::Verifying | Phase::PlacingExtensions | Phase::Staging => 1.0,
            },
            State::NeedReboot => 1.0,
            State::Idle | State::Checking | State::ReportingError => 0.0,
        }
    }
}

/// What GetStatus shows as NEW_VERSION / NEW_SIZE: the last offer. Like update_engine, it
/// stays after the attempt ends, until ResetStatus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    pub version: String,
    pub size: u64,
}

/// This boot, and where its health gate stands: independent of the update attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ThisBoot {
    pub(crate) version: String,
    pub(crate) id: String,
    /// This boot runs a freshly updated version that is not marked good yet: 3/2 waits.
    pub(crate) awaiting_good: bool,
    /// The health gate is running: scheduled checks wait for it.
    pub(crate) gate_running: bool,
}
