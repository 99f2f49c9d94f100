//! Requests against fixtures: Flatcar-shaped requests, round trips through our own writer,
//! and the fast path that must agree with the full parser. Responses are in `responses.rs`.

use std::path::PathBuf;

use fastpatch_omaha::*;

pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn flatcar_update_check_request() {
    let body = fixture("request_updatecheck.xml");
    let req = Request::parse(&body).unwrap();
    assert_eq!(req.protocol, "3.0");
    assert_eq!(req.install_source.as_deref(), Some("scheduler"));
    assert_eq!(req.is_machine.as_deref(), Some("1"));
    let os = req.os.as_ref().unwrap();
    assert_eq!(os.platform.as_deref(), Some("CoreOS"));
    assert_eq!(os.sp.as_deref(), Some("3602.2.0_x86_64"));
    assert_eq!(req.apps.len(), 1);
    let app = &req.apps[0];
    assert_eq!(app.appid, "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}");
    assert_eq!(normalize_appid(&app.appid), FLATCAR_APP_ID);
    assert_eq!(app.version.as_deref(), Some("3602.2.0"));
    assert_eq!(app.track.as_deref(), Some("stable"));
    assert_eq!(
        app.machine_id.as_deref(),
        Some("abce671d61774703ac7be60715220bfe")
    );
    assert_eq!(app.machine_alias.as_deref(), Some(""));
    assert_eq!(app.board.as_deref(), Some("amd64-usr"));
    assert_eq!(app.oem.as_deref(), Some("qemu"));
    assert_eq!(app.aleph_version.as_deref(), Some("3510.2.0"));
    assert_eq!(app.delta_okay.as_deref(), Some("false"));
    assert_eq!(app.ping.as_ref().unwrap().active.as_deref(), Some("1"));
    assert!(app.update_check.is_some());
    assert_eq!(app.events.len(), 1);
    assert_eq!(app.events[0].kind(), EventKind::UpdateComplete);
    assert_eq!(app.events[0].previous_version.as_deref(), Some(""));
    assert!(app.extra.is_empty());
    // No fastpatch_payload_ops: what every Flatcar client applies.
    assert_eq!(app.payload_ops, None);
    assert_eq!(app.applies(), PayloadOps::stock_flatcar());
}

#[test]
fn payload_ops_attribute_is_read_and_written() {
    let body = fixture("request_updatecheck.xml");
    let mut req = Request::parse(&body).unwrap();
    req.apps[0].payload_ops = Some("REPLACE,REPLACE_ZSTD,SOURCE_COPY".into());
    let xml = req.to_xml();
    assert!(
        xml.contains(r#"fastpatch_payload_ops="REPLACE,REPLACE_ZSTD,SOURCE_COPY""#),
        "{xml}"
    );
    let back = Request::parse(xml.as_bytes()).unwrap();
    assert_eq!(back, req);
    let applies = back.apps[0].applies();
    assert!(applies.covers(&PayloadOps::parse("REPLACE_ZSTD")));
    assert!(!applies.covers(&PayloadOps::parse("REPLACE_BZ")));
}

#[test]
fn appid_without_braces_and_upper_case() {
    let body = fixture("request_ondemand_nobraces.xml");
    let req = Request::parse(&body).unwrap();
    let app = &req.apps[0];
    assert_eq!(normalize_appid(&app.appid), FLATCAR_APP_ID);
    assert_eq!(req.install_source.as_deref(), Some("ondemandupdate"));
    assert_eq!(app.board.as_deref(), Some("arm64-usr"));
    assert_eq!(app.machine_alias.as_deref(), Some("web-01"));
    assert!(app.ping.is_none());
    assert!(app.events.is_empty());
}

#[test]
fn event_kinds() {
    let kind = |f: &str| {
        let body = fixture(f);
        let req = Request::parse(&body).unwrap();
        req.apps[0]
            .events
            .iter()
            .map(Event::kind)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        kind("request_event_download_started.xml"),
        [EventKind::DownloadStarted]
    );
    assert_eq!(kind("request_event_rollback.xml"), [EventKind::RolledBack]);
    assert_eq!(
        kind("request_event_complete.xml"),
        [EventKind::UpdateComplete]
    );
    let flagged = kind("request_event_error_flags.xml");
    let EventKind::Error(dev) = flagged[0] else {
        panic!("{flagged:?}")
    };
    assert_eq!(dev.base(), error_code::PAYLOAD_HASH_MISMATCH);
    assert_eq!(dev.flags(), error_code::FLAG_DEV_MODE);
    let EventKind::Error(http) = flagged[1] else {
        panic!("{flagged:?}")
    };
    assert_eq!(http.base(), error_code::HTTP_RESPONSE_BASE + 404);
    assert_eq!(http.flags(), error_code::FLAG_RESUMED);

    assert_eq!(Event::download_finished().kind(), EventKind::Downloaded);
    assert_eq!(Event::installed().kind(), EventKind::Installed);
    assert_eq!(Event::new(3, 9).kind(), EventKind::Deferred);
    assert_eq!(
        Event::new(800, 1).kind(),
        EventKind::Other {
            event_type: 800,
            event_result: 1
        }
    );
    // An error without a code is still an error.
    assert_eq!(Event::new(3, 0).kind(), EventKind::Error(ErrorCode(0)));
}

#[test]
fn multiple_apps_kept_in_order() {
    let body = fixture("request_multiple_apps.xml");
    let req = Request::parse(&body).unwrap();
    assert_eq!(req.apps.len(), 2);
    assert_eq!(
        normalize_appid(&req.apps[0].appid),
        "00000000-0000-0000-0000-00000000dead"
    );
    assert_eq!(normalize_appid(&req.apps[1].appid), FLATCAR_APP_ID);
}

#[test]
fn requests_round_trip() {
    for f in [
        "request_updatecheck.xml",
        "request_ondemand_nobraces.xml",
        "request_event_download_started.xml",
        "request_event_complete.xml",
        "request_event_rollback.xml",
        "request_event_error_flags.xml",
        "request_multiple_apps.xml",
    ] {
        let body = fixture(f);
        let req = Request::parse(&body).unwrap();
        let xml = req.to_xml();
        assert_eq!(Request::parse(xml.as_bytes()).unwrap(), req, "{f}:\n{xml}");
    }
}

#[test]
fn engine_written_request_has_flatcar_attribute_names() {
    let req = Request {
        protocol: "3.0".into(),
        version: Some("fastpatch-0.1.0".into()),
        updater_version: Some("fastpatch-0.1.0".into()),
        install_source: Some("scheduler".into()),
        is_machine: Some("1".into()),
        os: Some(Os {
            version: Some("Chateau".into()),
            platform: Some("CoreOS".into()),
            sp: Some("3602.2.0_x86_64".into()),
            arch: None,
        }),
        apps: vec![RequestApp {
            appid: format!("{{{FLATCAR_APP_ID}}}").into(),
            version: Some("3602.2.0".into()),
            track: Some("stable".into()),
            machine_id: Some("abc".into()),
            machine_alias: Some("".into()),
            board: Some("amd64-usr".into()),
            oem_version: Some("1".into()),
            aleph_version: Some("3510.2.0".into()),
            ping: Some(Ping {
                active: Some("1".into()),
                ..Ping::default()
            }),
            update_check: Some(UpdateCheck::default()),
            events: vec![
                Event::update_complete("3510.2.0"),
                Event::error(ErrorCode(0x8000_000A)),
            ],
            ..RequestApp::default()
        }],
        extra: vec![],
    };
    let xml = req.to_xml();
    for needle in [
        r#"<request protocol="3.0" version="fastpatch-0.1.0" updaterversion="fastpatch-0.1.0" installsource="scheduler" ismachine="1">"#,
        r#"<os version="Chateau" platform="CoreOS" sp="3602.2.0_x86_64"></os>"#,
        r#"appid="{e96281a6-d1af-4bde-9a0a-97b76e56dc57}""#,
        r#"machineid="abc" machinealias="""#,
        r#"oemversion="1" alephversion="3510.2.0""#,
        r#"<ping active="1"></ping><updatecheck></updatecheck>"#,
        r#"<event eventtype="3" eventresult="2" previousversion="3510.2.0"></event>"#,
        r#"<event eventtype="3" eventresult="0" errorcode="-2147483638"></event>"#,
    ] {
        assert!(xml.contains(needle), "missing {needle}\nin {xml}");
    }
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
}

/// The fast path takes what clients really send (every request fixture, captured from
/// Flatcar's update_engine and our engine, and our own writer's output) and builds the
/// same tree as the full parser; anything unusual goes to the full parser, which still
/// decides.
#[test]
fn fast_path_takes_real_requests_and_agrees_with_the_full_parser() {
    use fastpatch_omaha::{fast_path_agrees, fast_request_agrees, Limits};
    let limits = Limits::default();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut requests = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("request_") {
            continue;
        }
        requests += 1;
        let body = std::fs::read(&path).expect("read");
        assert_eq!(fast_path_agrees(&body, &limits), Some(true), "{name}");
        assert_eq!(fast_request_agrees(&body, &limits), Some(true), "{name}");
        let written = Request::parse(&body).expect("parses").to_xml();
        assert_eq!(
            fast_path_agrees(written.as_bytes(), &limits),
            Some(true),
            "{name} as we write it"
        );
    }
    assert!(requests >= 5, "request fixtures: {requests}");
    // Declined (None), and the full parser's answer stands.
    for (doc, parses) in [
        (
            r#"<request protocol="3.0" version="a&amp;b"></request>"#,
            true,
        ),
        (r#"<request protocol="3.0"><!-- c --></request>"#, true),
        (r#"<request protocol = "3.0"></request>"#, true),
        (r#"<request protocol="3.0">text</request>"#, true),
        (r#"<request protocol="3.0" v="a&#9;b"></request>"#, true),
        (r#"<request protocol="3.0" xml:lang="en"></request>"#, true),
        (r#"<request protocol="3.0" a="1" a="2"></request>"#, false),
        (r#"<request protocol="3.0"></requests>"#, false),
        (
            r#"<request protocol="3.0"><app appid="x"></request>"#,
            false,
        ),
        (r#"<request protocol="3.0"></request><request/>"#, false),
        (r#"<!DOCTYPE r><request protocol="3.0"></request>"#, false),
        // A declaration holding anything but plain characters, or never closed.
        (
            r#"<?xml version="1.0" encoding="UTF-8" x="?"?><request protocol="3.0"></request>"#,
            true,
        ),
        (
            r#"<?xml version="1.0" <request protocol="3.0"></request>"#,
            false,
        ),
    ] {
        assert_eq!(fast_path_agrees(doc.as_bytes(), &limits), None, "{doc}");
        assert_eq!(Request::parse(doc.as_bytes()).is_ok(), parses, "{doc}");
    }
    let v =
        Request::parse(br#"<request protocol="3.0" version="a&amp;b"></request>"#).expect("parses");
    assert_eq!(v.version.as_deref(), Some("a&b"));
    // Over a limit: declined by the fast path, refused by the full parser.
    let tight = Limits {
        max_attributes: 1,
        ..Limits::default()
    };
    let doc = br#"<request protocol="3.0" version="1"></request>"#;
    assert_eq!(fast_path_agrees(doc, &tight), None);
    assert!(Request::parse_with_limits(doc, &tight).is_err());
}

/// The direct path (tags straight into a `Request`) takes the usual request shape and
/// declines everything else, which the tree path then decides, with the same answer as
/// before: unknown elements are ignored, the first `<os>`/`<ping>` counts, errors stay errors.
#[test]
fn the_direct_path_declines_what_it_does_not_model() {
    use fastpatch_omaha::{fast_request_agrees, Limits};
    let limits = Limits::default();
    let app = r#"<app appid="{x}" version="1.0.0" machineid="m" foo="bar">"#;
    // Accepted: self-closing tags, events, extra attributes in order.
    for doc in [
        r#"<request protocol="3.0"/>"#.to_owned(),
        format!(
            r#"<request protocol="3.0" x="1"><os platform="CoreOS"/>{app}<ping active="1"/><updatecheck/><event eventtype="3" eventresult="2" previousversion=""/></app></request>"#
        ),
    ] {
        assert_eq!(
            fast_request_agrees(doc.as_bytes(), &limits),
            Some(true),
            "{doc}"
        );
    }
    // Declined; the tree path answers (Ok or Err, as it always did).
    for (doc, parses) in [
        (
            format!(r#"<request protocol="3.0">{app}<data name="x"/></app></request>"#),
            true,
        ),
        (
            r#"<request protocol="3.0"><os version="1"/><os version="2"/></request>"#.to_owned(),
            true,
        ),
        (
            format!(
                r#"<request protocol="3.0">{app}<ping active="1"/><ping active="0"/></app></request>"#
            ),
            true,
        ),
        (
            format!(r#"<request protocol="3.0">{app}<ping><x/></ping></app></request>"#),
            true,
        ),
        (
            r#"<request protocol="3.0"><app version="1"/></request>"#.to_owned(),
            false,
        ),
        (r#"<request protocol="2.0"/>"#.to_owned(), false),
        (r#"<request/>"#.to_owned(), false),
        (r#"<response protocol="3.0"/>"#.to_owned(), false),
        (
            format!(
                r#"<request protocol="3.0">{app}<event eventtype="x" eventresult="1"/></app></request>"#
            ),
            false,
        ),
    ] {
        assert_eq!(fast_request_agrees(doc.as_bytes(), &limits), None, "{doc}");
        assert_eq!(Request::parse(doc.as_bytes()).is_ok(), parses, "{doc}");
    }
    // The first <os> and <ping> count on the tree path, as before.
    let two_os =
        Request::parse(br#"<request protocol="3.0"><os version="1"/><os version="2"/></request>"#)
            .expect("parses");
    assert_eq!(two_os.os.and_then(|o| o.version).as_deref(), Some("1"));
    // Over the app limit: declined, and the tree path refuses it.
    let tight = Limits {
        max_apps: 1,
        ..Limits::default()
    };
    let doc = br#"<request protocol="3.0"><app appid="a"/><app appid="b"/></request>"#;
    assert_eq!(fast_request_agrees(doc, &tight), None);
    assert!(Request::parse_with_limits(doc, &tight).is_err());
}
