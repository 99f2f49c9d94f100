//! The engine's persisted state file (damaged by a bad disk or a hand edit): any bytes either
//! fail to decode or give a state the engine starts from without panicking, in every kind of
//! boot (same boot or a new one, slot staged or not, refused by the chooser or not).
#![no_main]

use fastpatch_engine_core::machine::{BootFacts, DurableState, Engine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(state) = serde_json::from_slice::<DurableState>(data) else {
        return;
    };
    let staged_boot = state.staged.as_ref().map(|s| s.boot_id.clone());
    for (same_boot, passive_slot_staged, passive_slot_refused) in
        (0..8u8).map(|i| (i & 1 != 0, i & 2 != 0, i & 4 != 0))
    {
        let boot = BootFacts {
            current_version: "1.0.0".into(),
            boot_id: if same_boot {
                staged_boot.clone().unwrap_or_default()
            } else {
                "fuzz-new-boot".into()
            },
            passive_slot_staged,
            passive_slot_refused,
        };
        let (engine, _actions) = Engine::start(state.clone(), boot);
        let json = serde_json::to_vec(engine.durable()).expect("state encodes");
        let back: DurableState = serde_json::from_slice(&json).expect("our own state decodes");
        assert_eq!(&back, engine.durable(), "state changed across save + load");
    }
});
