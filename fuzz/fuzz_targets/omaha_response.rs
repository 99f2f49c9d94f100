//! Omaha response parse + update_engine's acceptance rules (what the engine reads from a
//! server): never panics; a response that parses survives a write and a second parse, and
//! validating it gives the same outcome both times.
#![no_main]

use fastpatch_omaha::Response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(response) = Response::parse(data) else {
        return;
    };
    let outcomes: Vec<_> = response
        .apps
        .iter()
        .filter_map(|app| app.update_check.as_ref())
        .map(|check| check.validate())
        .collect();
    let xml = response.to_xml();
    let again = Response::parse(xml.as_bytes())
        .unwrap_or_else(|e| panic!("our own response XML does not parse: {e}\n{xml}"));
    assert_eq!(
        again, response,
        "response changed across to_xml + parse:\n{xml}"
    );
    let again_outcomes: Vec<_> = again
        .apps
        .iter()
        .filter_map(|app| app.update_check.as_ref())
        .map(|check| check.validate())
        .collect();
    assert_eq!(
        format!("{outcomes:?}"),
        format!("{again_outcomes:?}"),
        "validation differs after a round trip"
    );
});
