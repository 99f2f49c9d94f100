//! Omaha event codes as Flatcar's update_engine sends them.

/// `eventtype` values.
pub mod event_type {
    pub const UNKNOWN: u32 = 0;
    pub const DOWNLOAD_COMPLETE: u32 = 1;
    pub const INSTALL_COMPLETE: u32 = 2;
    /// Update applied (result 1), complete after reboot (result 2) or failed (result 0).
    pub const UPDATE_COMPLETE: u32 = 3;
    pub const UPDATE_DOWNLOAD_STARTED: u32 = 13;
    pub const UPDATE_DOWNLOAD_FINISHED: u32 = 14;
}

/// `eventresult` values.
pub mod event_result {
    pub const ERROR: u32 = 0;
    pub const SUCCESS: u32 = 1;
    pub const SUCCESS_REBOOT: u32 = 2;
    pub const UPDATE_DEFERRED: u32 = 9;
}

/// `errorcode` values (the base code, flags masked off) that matter to a server.
pub mod error_code {
    pub const SUCCESS: u32 = 0;
    pub const ERROR: u32 = 1;
    pub const DOWNLOAD_TRANSFER_ERROR: u32 = 9;
    pub const PAYLOAD_HASH_MISMATCH: u32 = 10;
    pub const PAYLOAD_SIZE_MISMATCH: u32 = 11;
    pub const DOWNLOAD_PAYLOAD_VERIFICATION_ERROR: u32 = 12;
    pub const POSTINSTALL_RUNNER_ERROR: u32 = 5;
    pub const OMAHA_REQUEST_ERROR: u32 = 2;
    pub const INSTALL_DEVICE_OPEN_ERROR: u32 = 7;
    pub const KERNEL_DEVICE_OPEN_ERROR: u32 = 8;
    pub const DOWNLOAD_NEW_PARTITION_INFO_ERROR: u32 = 13;
    pub const DOWNLOAD_WRITE_ERROR: u32 = 14;
    pub const NEW_ROOTFS_VERIFICATION_ERROR: u32 = 15;
    pub const DOWNLOAD_PAYLOAD_PUBKEY_VERIFICATION_ERROR: u32 = 18;
    /// A delta's source (the booted slot) is not the image the delta was made against.
    pub const DOWNLOAD_STATE_INITIALIZATION_ERROR: u32 = 20;
    pub const OMAHA_RESPONSE_INVALID: u32 = 34;
    /// The new version failed to boot and the machine went back to the old slot.
    pub const ROLLED_BACK: u32 = 44;
    /// fastpatch's own (not update_engine's): a system extension the machine has enabled
    /// could not be placed for the new version (not offered, download, hash or signature),
    /// so the new slot was not staged.
    pub const EXTENSION_ERROR: u32 = 1001;
    /// HTTP errors are reported as 2000 + status code.
    pub const HTTP_RESPONSE_BASE: u32 = 2000;

    /// Flag bits OR-ed onto the base code.
    pub const FLAG_DEV_MODE: u32 = 1 << 31;
    pub const FLAG_RESUMED: u32 = 1 << 30;
    pub const FLAG_TEST_IMAGE: u32 = 1 << 29;
    pub const FLAG_TEST_OMAHA_URL: u32 = 1 << 28;
    pub const FLAGS_MASK: u32 =
        FLAG_DEV_MODE | FLAG_RESUMED | FLAG_TEST_IMAGE | FLAG_TEST_OMAHA_URL;
}

/// An `errorcode` as sent: a base code with flag bits in the top four bits. Persisted by the
/// engine as the plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ErrorCode(pub u32);

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
    // The numbers are update_engine's (`error_code.h`), see [`error_code`].
    pub const SUCCESS: ErrorCode = ErrorCode(error_code::SUCCESS);
    pub const ERROR: ErrorCode = ErrorCode(error_code::ERROR);
    pub const OMAHA_REQUEST_ERROR: ErrorCode = ErrorCode(error_code::OMAHA_REQUEST_ERROR);
    pub const POSTINSTALL_RUNNER_ERROR: ErrorCode = ErrorCode(error_code::POSTINSTALL_RUNNER_ERROR);
    pub const INSTALL_DEVICE_OPEN_ERROR: ErrorCode =
        ErrorCode(error_code::INSTALL_DEVICE_OPEN_ERROR);
    pub const DOWNLOAD_TRANSFER_ERROR: ErrorCode = ErrorCode(error_code::DOWNLOAD_TRANSFER_ERROR);
    pub const PAYLOAD_HASH_MISMATCH: ErrorCode = ErrorCode(error_code::PAYLOAD_HASH_MISMATCH);
    pub const PAYLOAD_SIZE_MISMATCH: ErrorCode = ErrorCode(error_code::PAYLOAD_SIZE_MISMATCH);
    pub const DOWNLOAD_PAYLOAD_VERIFICATION_ERROR: ErrorCode =
        ErrorCode(error_code::DOWNLOAD_PAYLOAD_VERIFICATION_ERROR);
    pub const DOWNLOAD_NEW_PARTITION_INFO_ERROR: ErrorCode =
        ErrorCode(error_code::DOWNLOAD_NEW_PARTITION_INFO_ERROR);
    pub const DOWNLOAD_WRITE_ERROR: ErrorCode = ErrorCode(error_code::DOWNLOAD_WRITE_ERROR);
    pub const DOWNLOAD_PAYLOAD_PUBKEY_VERIFICATION_ERROR: ErrorCode =
        ErrorCode(error_code::DOWNLOAD_PAYLOAD_PUBKEY_VERIFICATION_ERROR);
    pub const OMAHA_RESPONSE_INVALID: ErrorCode = ErrorCode(error_code::OMAHA_RESPONSE_INVALID);
    /// A delta payload whose source is not the booted slot's image.
    pub const DOWNLOAD_STATE_INITIALIZATION_ERROR: ErrorCode =
        ErrorCode(error_code::DOWNLOAD_STATE_INITIALIZATION_ERROR);
    /// An enabled system extension for the new version could not be placed: nothing staged.
    pub const EXTENSION_ERROR: ErrorCode = ErrorCode(error_code::EXTENSION_ERROR);
    /// The machine came back on the old version: the new one never booted good.
    pub const ROLLED_BACK: ErrorCode = ErrorCode(error_code::ROLLED_BACK);
    pub const NEW_ROOTFS_VERIFICATION_ERROR: ErrorCode =
        ErrorCode(error_code::NEW_ROOTFS_VERIFICATION_ERROR);

    /// The code with `flags` set (flag bits already present are kept).
    pub fn with_flags(self, flags: ErrorFlags) -> ErrorCode {
        let mut v = self.0;
        if flags.resumed {
            v |= error_code::FLAG_RESUMED;
        }
        if flags.test_omaha_url {
            v |= error_code::FLAG_TEST_OMAHA_URL;
        }
        ErrorCode(v)
    }

    /// The code without flag bits.
    pub fn base(self) -> u32 {
        self.0 & !error_code::FLAGS_MASK
    }
    pub fn flags(self) -> u32 {
        self.0 & error_code::FLAGS_MASK
    }
    pub fn is_rolled_back(self) -> bool {
        self.base() == error_code::ROLLED_BACK
    }
    /// update_engine formats the code with `%d`, so a set dev-mode bit arrives
    /// negative. Accept both signed and unsigned 32-bit spellings.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        let v: i64 = s.trim().parse().ok()?;
        if v < i64::from(i32::MIN) || v > i64::from(u32::MAX) {
            return None;
        }
        Some(ErrorCode(v as u32))
    }
    /// Serialised the way update_engine writes it (signed decimal).
    pub fn to_wire(self) -> String {
        (self.0 as i32).to_string()
    }
}

/// What an event means, for servers tracking instance status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// 13/1
    DownloadStarted,
    /// 14/1
    Downloaded,
    /// 3/1: written to the passive slot, waiting for reboot.
    Installed,
    /// 3/2: the first check after booting the new version.
    UpdateComplete,
    /// result 0 with errorcode 44.
    RolledBack,
    /// result 0 with any other code.
    Error(ErrorCode),
    /// result 9.
    Deferred,
    /// Anything else (kept, not interpreted).
    Other { event_type: u32, event_result: u32 },
}
