//! Property tests: parsing never panics, and what we write we read back.

use fastpatch_omaha::*;
use proptest::prelude::*;

fn attr_value() -> impl Strategy<Value = String> {
    // Printable text including XML metacharacters and non-ASCII.
    "[ -~äöü€\t\n]{0,24}"
}

fn opt_value() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(attr_value())
}

fn event() -> impl Strategy<Value = Event> {
    (
        any::<u32>(),
        any::<u32>(),
        proptest::option::of(any::<u32>()),
        opt_value(),
    )
        .prop_map(|(t, r, code, prev)| Event {
            event_type: t,
            event_result: r,
            error_code: code.map(ErrorCode),
            previous_version: prev,
        })
}

fn request_app() -> impl Strategy<Value = RequestApp<'static>> {
    (
        attr_value(),
        opt_value(),
        opt_value(),
        opt_value(),
        opt_value(),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(event(), 0..4),
    )
        .prop_map(
            |(appid, version, track, machine_id, board, ping, uc, events)| RequestApp {
                appid: appid.into(),
                version: version.map(Into::into),
                track: track.map(Into::into),
                machine_id: machine_id.map(Into::into),
                board: board.map(Into::into),
                ping: ping.then(|| Ping {
                    active: Some("1".into()),
                    ..Ping::default()
                }),
                update_check: uc.then(UpdateCheck::default),
                events,
                ..RequestApp::default()
            },
        )
}

proptest! {
    #[test]
    fn request_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Request::parse(&bytes);
        let _ = Response::parse(&bytes);
    }

    #[test]
    fn xmlish_input_never_panics(s in r#"(<[a-z!?/]{0,3}[a-z]{0,8}( [a-z]{1,6}="[^"]{0,8}")*/?>|&[a-z#0-9]{0,5};|[ -~]{0,6}){0,40}"#) {
        let _ = Request::parse(s.as_bytes());
        let _ = Response::parse(s.as_bytes());
    }

    #[test]
    fn mutated_fixture_never_panics(pos in 0usize..1200, byte in any::<u8>()) {
        let mut doc = include_bytes!("../fixtures/request_updatecheck.xml").to_vec();
        let p = pos % doc.len();
        doc[p] = byte;
        let _ = Request::parse(&doc);
        let mut doc = include_bytes!("../fixtures/response_update.xml").to_vec();
        let p = pos % doc.len();
        doc[p] = byte;
        if let Ok(resp) = Response::parse(&doc) {
            for app in &resp.apps {
                if let Some(uc) = &app.update_check {
                    let _ = uc.validate();
                }
            }
        }
    }

    #[test]
    fn requests_round_trip(apps in proptest::collection::vec(request_app(), 0..3), install in opt_value()) {
        let req = Request {
            protocol: "3.0".into(),
            install_source: install.map(Into::into),
            apps,
            ..Request::default()
        };
        let xml = req.to_xml();
        let parsed = Request::parse(xml.as_bytes()).unwrap();
        prop_assert_eq!(parsed, req);
    }

    #[test]
    fn responses_round_trip(
        version in "[0-9.]{1,12}",
        name in attr_value(),
        size in 1u64..u64::MAX,
        sha in proptest::collection::vec(any::<u8>(), 32),
        poll in proptest::option::of(any::<u64>()),
        events in 0usize..3,
    ) {
        let mut uc = UpdateCheckResponse::update(vec!["http://h/p/".into()], version, name, size, None, encode_b64(&sha));
        uc.poll_interval = poll;
        let mut app = ResponseApp::ok(FLATCAR_APP_ID);
        app.update_check = Some(uc);
        app.events = vec![Status::Ok; events];
        let resp = Response::new("fastpatch", 1, vec![app, ResponseApp::error("x", Status::ErrorUnknownApplication)]);
        let parsed = Response::parse(resp.to_xml().as_bytes()).unwrap();
        prop_assert_eq!(&parsed, &resp);
    }
}
