//! What the engine reports to the update server: Omaha event triples and update_engine's error
//! codes. Kept free of XML; the daemon turns these into `<event>` elements.

use serde::{Deserialize, Serialize};

/// An update_engine error code (the numbers Omaha servers see in `errorcode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const SUCCESS: ErrorCode = ErrorCode(0);
    pub const ERROR: ErrorCode = ErrorCode(1);
    pub const OMAHA_REQUEST_ERROR: ErrorCode = ErrorCode(2);
    pub const INSTALL_DEVICE_OPEN_ERROR: ErrorCode = ErrorCode(7);
    pub const DOWNLOAD_TRANSFER_ERROR: ErrorCode = ErrorCode(9);
    pub const PAYLOAD_HASH_MISMATCH: ErrorCode = ErrorCode(10);
    pub const PAYLOAD_SIZE_MISMATCH: ErrorCode = ErrorCode(11);
    pub const DOWNLOAD_PAYLOAD_VERIFICATION_ERROR: ErrorCode = ErrorCode(12);
    pub const DOWNLOAD_NEW_PARTITION_INFO_ERROR: ErrorCode = ErrorCode(13);
    pub const DOWNLOAD_WRITE_ERROR: ErrorCode = ErrorCode(14);
    pub const POSTINSTALL_RUNNER_ERROR: ErrorCode = ErrorCode(5);
    pub const OMAHA_RESPONSE_INVALID: ErrorCode = ErrorCode(34);
    /// The machine came back on the old version: the new one never booted good.
    pub const ROLLED_BACK: ErrorCode = ErrorCode(44);
}

/// One `<event eventtype eventresult [errorcode] [previousversion]>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub event_type: u32,
    pub result: u32,
    pub error_code: Option<ErrorCode>,
    pub previous_version: Option<String>,
}

impl Event {
    /// 13/1: download started.
    pub fn download_started() -> Event {
        Event {
            event_type: 13,
            result: 1,
            error_code: None,
            previous_version: None,
        }
    }
    /// 14/1: download finished.
    pub fn download_finished() -> Event {
        Event {
            event_type: 14,
            result: 1,
            error_code: None,
            previous_version: None,
        }
    }
    /// 3/1: update installed (applied), reboot pending.
    pub fn installed() -> Event {
        Event {
            event_type: 3,
            result: 1,
            error_code: None,
            previous_version: None,
        }
    }
    /// 3/2: update complete — the new version booted (and passed the health gate).
    pub fn update_complete(previous_version: &str) -> Event {
        Event {
            event_type: 3,
            result: 2,
            error_code: None,
            previous_version: Some(previous_version.to_string()),
        }
    }
    /// 3/0 with an error code.
    pub fn error(code: ErrorCode) -> Event {
        Event {
            event_type: 3,
            result: 0,
            error_code: Some(code),
            previous_version: None,
        }
    }
    /// 3/0 errorcode 44: rolled back to the previous version.
    pub fn rolled_back(failed_version: &str) -> Event {
        Event {
            event_type: 3,
            result: 0,
            error_code: Some(ErrorCode::ROLLED_BACK),
            previous_version: Some(failed_version.to_string()),
        }
    }
}
