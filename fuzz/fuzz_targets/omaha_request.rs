//! Omaha request parse (what the server reads from every machine): never panics, stays within
//! its limits, whatever parses survives a write and a second parse unchanged, and the fast
//! path (plain documents) builds exactly the tree the full parser builds whenever it accepts,
//! and the direct path builds exactly the request the tree path builds whenever it accepts.
#![no_main]

use fastpatch_omaha::{fast_path_agrees, fast_request_agrees, Limits, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert_ne!(
        fast_path_agrees(data, &Limits::default()),
        Some(false),
        "the fast path and the full parser disagree on {:?}",
        String::from_utf8_lossy(data)
    );
    assert_ne!(
        fast_request_agrees(data, &Limits::default()),
        Some(false),
        "the direct path and the tree path build different requests from {:?}",
        String::from_utf8_lossy(data)
    );
    let Ok(request) = Request::parse(data) else {
        return;
    };
    for app in &request.apps {
        for event in &app.events {
            let _ = event.kind();
        }
    }
    let xml = request.to_xml();
    let again = Request::parse(xml.as_bytes())
        .unwrap_or_else(|e| panic!("our own request XML does not parse: {e}\n{xml}"));
    assert_eq!(
        again, request,
        "request changed across to_xml + parse:\n{xml}"
    );
});
