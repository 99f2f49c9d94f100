//! Omaha request parse (what the server reads from every machine): never panics, stays within
//! its limits, and whatever parses survives a write and a second parse unchanged.
#![no_main]

use fastpatch_omaha::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
