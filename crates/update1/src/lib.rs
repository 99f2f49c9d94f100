//! `com.coreos.update1`, update_engine's D-Bus interface, defined once: the engine serves it,
//! locksmithd and locksmithctl listen to it, `update_engine_client` and `fastpatch status` read
//! it, and the test doubles speak it. No D-Bus library here: the names, the status values with
//! the exact strings clients expect, and the `GetStatus` / `StatusUpdate` body.

/// The engine's well-known bus name.
pub const BUS_NAME: &str = "com.coreos.update1";
/// Its object.
pub const OBJECT_PATH: &str = "/com/coreos/update1";
/// Its interface (methods `GetStatus`, `AttemptUpdate`, `ResetStatus`; signal `StatusUpdate`).
pub const INTERFACE: &str = "com.coreos.update1.Manager";

/// The body of `GetStatus`'s reply and of the `StatusUpdate` signal, as it crosses the bus:
/// (last_checked_time, progress, current_operation, new_version, new_size).
pub type RawStatus = (i64, f64, String, String, i64);

/// A status as read from the bus. `current_operation` stays the string the engine sent (an
/// engine of another make may send one we do not know); [`Status::operation`] types it.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub last_checked_time: i64,
    pub progress: f64,
    pub current_operation: String,
    pub new_version: String,
    pub new_size: i64,
}

impl Status {
    /// The operation as a known status.
    pub fn operation(&self) -> Result<UpdateStatus, UnknownStatus> {
        self.current_operation.parse()
    }

    /// Staged: a reboot is needed (what locksmithd waits for).
    pub fn need_reboot(&self) -> bool {
        self.operation() == Ok(UpdateStatus::UpdatedNeedReboot)
    }
}

impl From<RawStatus> for Status {
    fn from(
        (last_checked_time, progress, current_operation, new_version, new_size): RawStatus,
    ) -> Self {
        Status {
            last_checked_time,
            progress,
            current_operation,
            new_version,
            new_size,
        }
    }
}

impl From<Status> for RawStatus {
    fn from(s: Status) -> Self {
        (
            s.last_checked_time,
            s.progress,
            s.current_operation,
            s.new_version,
            s.new_size,
        )
    }
}

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The engine's externally visible status, in update_engine's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UpdateStatus {
    Idle,
    CheckingForUpdate,
    UpdateAvailable,
    Downloading,
    Verifying,
    Finalizing,
    UpdatedNeedReboot,
    ReportingErrorEvent,
}

impl UpdateStatus {
    pub const ALL: [UpdateStatus; 8] = [
        UpdateStatus::Idle,
        UpdateStatus::CheckingForUpdate,
        UpdateStatus::UpdateAvailable,
        UpdateStatus::Downloading,
        UpdateStatus::Verifying,
        UpdateStatus::Finalizing,
        UpdateStatus::UpdatedNeedReboot,
        UpdateStatus::ReportingErrorEvent,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            UpdateStatus::Idle => "UPDATE_STATUS_IDLE",
            UpdateStatus::CheckingForUpdate => "UPDATE_STATUS_CHECKING_FOR_UPDATE",
            UpdateStatus::UpdateAvailable => "UPDATE_STATUS_UPDATE_AVAILABLE",
            UpdateStatus::Downloading => "UPDATE_STATUS_DOWNLOADING",
            UpdateStatus::Verifying => "UPDATE_STATUS_VERIFYING",
            UpdateStatus::Finalizing => "UPDATE_STATUS_FINALIZING",
            UpdateStatus::UpdatedNeedReboot => "UPDATE_STATUS_UPDATED_NEED_REBOOT",
            UpdateStatus::ReportingErrorEvent => "UPDATE_STATUS_REPORTING_ERROR_EVENT",
        }
    }

    /// True while an update attempt is under way (a new check must not start one).
    pub fn is_busy(self) -> bool {
        !matches!(self, UpdateStatus::Idle | UpdateStatus::UpdatedNeedReboot)
    }
}

impl fmt::Display for UpdateStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown update status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for UpdateStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UpdateStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip() {
        for st in UpdateStatus::ALL {
            assert_eq!(st.as_str().parse::<UpdateStatus>().unwrap(), st);
        }
        assert_eq!(
            UpdateStatus::UpdatedNeedReboot.to_string(),
            "UPDATE_STATUS_UPDATED_NEED_REBOOT"
        );
        assert!("UPDATE_STATUS_BOGUS".parse::<UpdateStatus>().is_err());
    }

    #[test]
    fn the_wire_body_round_trips_and_need_reboot_is_typed() {
        let raw: RawStatus = (
            7,
            0.5,
            UpdateStatus::UpdatedNeedReboot.to_string(),
            "2.0.0".into(),
            9,
        );
        let s = Status::from(raw.clone());
        assert!(s.need_reboot());
        assert_eq!(RawStatus::from(s), raw);
        let other = Status {
            current_operation: "UPDATE_STATUS_SOMETHING_ELSE".into(),
            ..Status::default()
        };
        assert!(!other.need_reboot());
        assert!(other.operation().is_err());
    }
}
