//! What the engine reports to the update server: Omaha event triples and update_engine's error
//! codes. Kept free of XML; the daemon turns these into `<event>` elements.

use fastpatch_omaha::error_code as omaha_codes;
use serde::{Deserialize, Serialize};

/// An update_engine error code (the numbers Omaha servers see in `errorcode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    // The numbers are update_engine's (`error_code.h`); fastpatch-omaha owns them.
    pub const SUCCESS: ErrorCode = ErrorCode(omaha_codes::SUCCESS);
    pub const ERROR: ErrorCode = ErrorCode(omaha_codes::ERROR);
    pub const OMAHA_REQUEST_ERROR: ErrorCode = ErrorCode(omaha_codes::OMAHA_REQUEST_ERROR);
    pub const POSTINSTALL_RUNNER_ERROR: ErrorCode =
        ErrorCode(omaha_codes::POSTINSTALL_RUNNER_ERROR);
    pub const INSTALL_DEVICE_OPEN_ERROR: ErrorCode =
        ErrorCode(omaha_codes::INSTALL_DEVICE_OPEN_ERROR);
    pub const DOWNLOAD_TRANSFER_ERROR: ErrorCode = ErrorCode(omaha_codes::DOWNLOAD_TRANSFER_ERROR);
    pub const PAYLOAD_HASH_MISMATCH: ErrorCode = ErrorCode(omaha_codes::PAYLOAD_HASH_MISMATCH);
    pub const PAYLOAD_SIZE_MISMATCH: ErrorCode = ErrorCode(omaha_codes::PAYLOAD_SIZE_MISMATCH);
    pub const DOWNLOAD_PAYLOAD_VERIFICATION_ERROR: ErrorCode =
        ErrorCode(omaha_codes::DOWNLOAD_PAYLOAD_VERIFICATION_ERROR);
    pub const DOWNLOAD_NEW_PARTITION_INFO_ERROR: ErrorCode =
        ErrorCode(omaha_codes::DOWNLOAD_NEW_PARTITION_INFO_ERROR);
    pub const DOWNLOAD_WRITE_ERROR: ErrorCode = ErrorCode(omaha_codes::DOWNLOAD_WRITE_ERROR);
    pub const DOWNLOAD_PAYLOAD_PUBKEY_VERIFICATION_ERROR: ErrorCode =
        ErrorCode(omaha_codes::DOWNLOAD_PAYLOAD_PUBKEY_VERIFICATION_ERROR);
    pub const OMAHA_RESPONSE_INVALID: ErrorCode = ErrorCode(omaha_codes::OMAHA_RESPONSE_INVALID);
    /// A delta payload whose source is not the booted slot's image.
    pub const DOWNLOAD_STATE_INITIALIZATION_ERROR: ErrorCode =
        ErrorCode(omaha_codes::DOWNLOAD_STATE_INITIALIZATION_ERROR);
    /// An enabled system extension for the new version could not be placed: nothing staged.
    pub const EXTENSION_ERROR: ErrorCode = ErrorCode(omaha_codes::EXTENSION_ERROR);
    /// The machine came back on the old version: the new one never booted good.
    pub const ROLLED_BACK: ErrorCode = ErrorCode(omaha_codes::ROLLED_BACK);
}

/// The context bits update_engine ORs into the error code of a failed attempt
/// (`GetErrorCodeFlags`): flags never change the base code a server groups failures by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorFlags {
    /// The attempt continued an interrupted download (`1 << 30`).
    pub resumed: bool,
    /// The update server is not the production default (`1 << 28`).
    pub test_omaha_url: bool,
}

impl ErrorCode {
    /// The base code with `flags` set (flag bits already present are kept).
    pub fn with_flags(self, flags: ErrorFlags) -> ErrorCode {
        let mut v = self.0;
        if flags.resumed {
            v |= omaha_codes::FLAG_RESUMED;
        }
        if flags.test_omaha_url {
            v |= omaha_codes::FLAG_TEST_OMAHA_URL;
        }
        ErrorCode(v)
    }

    /// The code without flag bits.
    pub fn base(self) -> u32 {
        self.0 & !omaha_codes::FLAGS_MASK
    }
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

impl Event {
    /// The wire form, for the Omaha request.
    pub fn to_omaha(&self) -> fastpatch_omaha::Event {
        fastpatch_omaha::Event {
            event_type: self.event_type,
            event_result: self.result,
            error_code: self.error_code.map(|c| fastpatch_omaha::ErrorCode(c.0)),
            previous_version: self.previous_version.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_matches_the_omaha_crate() {
        assert_eq!(
            Event::installed().to_omaha(),
            fastpatch_omaha::Event::installed()
        );
        assert_eq!(
            Event::download_started().to_omaha(),
            fastpatch_omaha::Event::download_started()
        );
        assert_eq!(
            Event::update_complete("1").to_omaha(),
            fastpatch_omaha::Event::update_complete("1")
        );
        let rb = Event::rolled_back("2").to_omaha();
        assert!(rb.error_code.is_some_and(|c| c.is_rolled_back()));
        assert_eq!(ErrorCode::DOWNLOAD_WRITE_ERROR, ErrorCode(14));
    }

    #[test]
    fn flags_are_update_engines_bits_over_an_unchanged_base() {
        let code = ErrorCode::PAYLOAD_HASH_MISMATCH;
        assert_eq!(code.with_flags(ErrorFlags::default()), code);
        let both = code.with_flags(ErrorFlags {
            resumed: true,
            test_omaha_url: true,
        });
        assert_eq!(both.0, 10 | (1 << 30) | (1 << 28));
        assert_eq!(both.base(), 10);
        let wire = Event::error(both).to_omaha();
        assert_eq!(wire.error_code.map(|c| c.base()), Some(10));
        assert_eq!(
            wire.error_code.map(|c| c.flags()),
            Some((1 << 30) | (1 << 28))
        );
        assert_eq!(
            ErrorCode::ROLLED_BACK
                .with_flags(ErrorFlags {
                    resumed: false,
                    test_omaha_url: true
                })
                .base(),
            44
        );
    }
}
