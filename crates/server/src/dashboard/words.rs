//! Omaha event and error codes in words, as update_engine means them.

use fastpatch_omaha::{error_code as ec, event_result as er, event_type as et, ErrorCode};

/// What an event says, e.g. "download started", "update failed".
pub fn event(event_type: i64, event_result: i64) -> String {
    let (t, r) = (event_type as u32, event_result as u32);
    match (t, r) {
        (et::UPDATE_DOWNLOAD_STARTED, er::SUCCESS) => "download started".into(),
        (et::UPDATE_DOWNLOAD_FINISHED, er::SUCCESS) => "download finished".into(),
        (et::UPDATE_COMPLETE, er::SUCCESS) => "update installed, waiting for a reboot".into(),
        (et::UPDATE_COMPLETE, er::SUCCESS_REBOOT) => {
            "update complete: rebooted into the new version".into()
        }
        (et::UPDATE_COMPLETE, er::ERROR) => "update failed".into(),
        (_, er::UPDATE_DEFERRED) => "update deferred by the machine".into(),
        (_, er::ERROR) => format!("failure (event type {t})"),
        (et::DOWNLOAD_COMPLETE, _) => "download complete".into(),
        (et::INSTALL_COMPLETE, _) => "install complete".into(),
        _ => format!("event type {t}, result {r}"),
    }
}

/// An `errorcode` explained: the base code in words plus any flag bits.
pub fn error_code(code: i64) -> String {
    let c = ErrorCode(code as u32);
    let base = c.base();
    let mut text = match base {
        ec::SUCCESS => "success".to_owned(),
        ec::ERROR => "generic error".to_owned(),
        ec::OMAHA_REQUEST_ERROR => "the update check request failed".to_owned(),
        ec::POSTINSTALL_RUNNER_ERROR => "the post-install step failed".to_owned(),
        ec::INSTALL_DEVICE_OPEN_ERROR => "could not open the partition to install to".to_owned(),
        ec::KERNEL_DEVICE_OPEN_ERROR => "could not open the kernel partition".to_owned(),
        ec::DOWNLOAD_TRANSFER_ERROR => "the download was interrupted or failed".to_owned(),
        ec::PAYLOAD_HASH_MISMATCH => "the downloaded payload's hash does not match the offer".to_owned(),
        ec::PAYLOAD_SIZE_MISMATCH => "the downloaded payload's size does not match the offer".to_owned(),
        ec::DOWNLOAD_PAYLOAD_VERIFICATION_ERROR => "the payload's signature did not verify".to_owned(),
        ec::DOWNLOAD_NEW_PARTITION_INFO_ERROR => "the payload's partition information is invalid".to_owned(),
        ec::DOWNLOAD_WRITE_ERROR => "writing the new partition failed (disk error?)".to_owned(),
        ec::NEW_ROOTFS_VERIFICATION_ERROR => "the written partition did not verify".to_owned(),
        ec::DOWNLOAD_STATE_INITIALIZATION_ERROR => {
            "the delta update does not apply to the running image (use the full payload)".to_owned()
        }
        ec::DOWNLOAD_PAYLOAD_PUBKEY_VERIFICATION_ERROR => "the payload was not signed with a trusted key".to_owned(),
        ec::OMAHA_RESPONSE_INVALID => "the server's answer was not valid for the machine".to_owned(),
        ec::EXTENSION_ERROR => "a system extension enabled on the machine could not be placed for the new version (not offered, or its download or signature failed); nothing was staged".to_owned(),
        ec::ROLLED_BACK => "rolled back: the new version did not boot healthy, the machine went back to the old one".to_owned(),
        b if (ec::HTTP_RESPONSE_BASE..ec::HTTP_RESPONSE_BASE + 1000).contains(&b) => {
            format!("the download server answered HTTP {}", b - ec::HTTP_RESPONSE_BASE)
        }
        b => format!("error code {b} (not known to fastpatch)"),
    };
    let flags: Vec<&str> = [
        (ec::FLAG_DEV_MODE, "developer mode"),
        (ec::FLAG_RESUMED, "resumed download"),
        (ec::FLAG_TEST_IMAGE, "test image"),
        (ec::FLAG_TEST_OMAHA_URL, "test server URL"),
    ]
    .into_iter()
    .filter(|(bit, _)| c.flags() & bit != 0)
    .map(|(_, w)| w)
    .collect();
    if !flags.is_empty() {
        text.push_str(&format!(" [{}]", flags.join(", ")));
    }
    text
}

/// What a status means to an operator.
pub fn status(s: &str) -> &'static str {
    match s {
        "undefined" => "checked in, nothing offered yet",
        "granted" => "offered the update",
        "downloading" => "downloading the update",
        "downloaded" => "downloaded, installing",
        "installed" => "installed, waiting for a reboot",
        "complete" => "running the new version",
        "error" => "the update failed",
        "on-hold" => "an update exists but the policy holds it back",
        _ => "unknown status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_in_words() {
        assert!(error_code(44).starts_with("rolled back"));
        assert_eq!(error_code(2404), "the download server answered HTTP 404");
        assert!(error_code(10).contains("hash"));
        assert!(error_code(20).contains("delta update does not apply"));
        assert_eq!(error_code(777), "error code 777 (not known to fastpatch)");
        // update_engine sends the dev-mode bit as a negative %d.
        let dev = i64::from((ec::FLAG_DEV_MODE | ec::DOWNLOAD_TRANSFER_ERROR) as i32);
        assert!(dev < 0);
        assert_eq!(
            error_code(dev),
            "the download was interrupted or failed [developer mode]"
        );
    }

    #[test]
    fn events_in_words() {
        assert_eq!(event(13, 1), "download started");
        assert_eq!(
            event(3, 2),
            "update complete: rebooted into the new version"
        );
        assert_eq!(event(3, 0), "update failed");
        assert_eq!(event(99, 7), "event type 99, result 7");
    }
}
