//! FleetLock request bodies (what any client on the network can send to locksmithd's
//! FleetLock server): never a panic; an accepted request names a configured group and a
//! non-empty id, a refused one carries one of airlock's error kinds.
#![no_main]

use std::collections::BTreeMap;

use fastpatch_locksmith_core::fleetlock::{check_request, valid_group};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    let header: Option<&[u8]> = match choice % 4 {
        0 => None,
        1 => Some(b"true"),
        2 => Some(b" true "),
        _ => Some(b"false"),
    };
    let groups = BTreeMap::from([("default".to_string(), 1), ("workers".to_string(), 2)]);
    match check_request(header, body, &groups) {
        Ok(accepted) => {
            assert!(!accepted.id.trim().is_empty(), "accepted an empty id");
            assert!(
                valid_group(&accepted.group),
                "accepted group {:?}",
                accepted.group
            );
            assert_eq!(groups.get(&accepted.group), Some(&accepted.slots));
        }
        Err(refused) => assert!(
            ["invalid_client_identity", "unknown_group"].contains(&refused.kind),
            "kind {}",
            refused.kind
        ),
    }
});
