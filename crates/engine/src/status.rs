//! update_engine's status values, with the exact strings D-Bus clients (locksmithd, the Flatcar
//! Linux Update Operator, `update_engine_client -status`) expect.

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

    pub fn as_str(self) -> &'static str {
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

#[derive(Debug, thiserror::Error)]
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
}
