//! What the engine reports to the update server: Omaha events and update_engine's error codes,
//! defined once in the omaha crate (the wire vocabulary and the persisted form alike).

pub use fastpatch_omaha::{ErrorCode, ErrorFlags, Event};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_persisted_form_is_the_one_every_engine_version_reads() {
        let json = serde_json::to_value(Event::rolled_back("2")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"event_type": 3, "result": 0, "error_code": 44, "previous_version": "2"})
        );
        // As written by engines from before the types were shared (a rollback may bring one
        // back, and it must read the new file too: the names did not change).
        let old: Event = serde_json::from_str(
            r#"{"event_type": 3, "result": 2, "error_code": null, "previous_version": "1"}"#,
        )
        .unwrap();
        assert_eq!(old, Event::update_complete("1"));
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
        assert_eq!((both.base(), both.flags()), (10, (1 << 30) | (1 << 28)));
        let wire = Event::error(both);
        assert_eq!(wire.error_code.map(|c| c.base()), Some(10));
        assert_eq!(
            ErrorCode::ROLLED_BACK
                .with_flags(ErrorFlags {
                    resumed: false,
                    test_omaha_url: true
                })
                .base(),
            44
        );
        assert!(Event::rolled_back("2")
            .error_code
            .is_some_and(|c| c.is_rolled_back()));
    }
}
