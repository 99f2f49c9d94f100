//! Fixture-based tests: Flatcar-shaped requests and Nebraska-shaped responses,
//! round trips through our own serialisers, and malformed input.

use std::path::PathBuf;

use fastpatch_omaha::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn flatcar_update_check_request() {
    let req = Request::parse(&fixture("request_updatecheck.xml")).unwrap();
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
    let mut req = Request::parse(&fixture("request_updatecheck.xml")).unwrap();
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
    let req = Request::parse(&fixture("request_ondemand_nobraces.xml")).unwrap();
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
        let req = Request::parse(&fixture(f)).unwrap();
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
    let req = Request::parse(&fixture("request_multiple_apps.xml")).unwrap();
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
        let req = Request::parse(&fixture(f)).unwrap();
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
            appid: format!("{{{FLATCAR_APP_ID}}}"),
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

#[test]
fn nebraska_update_response_validates() {
    let resp = Response::parse(&fixture("response_update.xml")).unwrap();
    assert_eq!(resp.server.as_deref(), Some("nebraska"));
    assert_eq!(resp.daystart.unwrap().elapsed_seconds, 0);
    let app = resp.app(&format!("{{{FLATCAR_APP_ID}}}")).unwrap();
    assert_eq!(app.status, Status::Ok);
    assert_eq!(app.ping, Some(Status::Ok));
    assert_eq!(app.events, [Status::Ok]);
    let uc = app.update_check.as_ref().unwrap();
    let CheckOutcome::Update(offer) = uc.validate().unwrap() else {
        panic!("expected an update")
    };
    assert_eq!(offer.version, "3732.0.0");
    assert_eq!(
        offer.urls,
        [
            "https://update.example.invalid/amd64-usr/3732.0.0/flatcar_production_update.gz",
            "https://mirror.example.invalid/amd64-usr/3732.0.0/flatcar_production_update.gz"
        ]
    );
    assert_eq!(offer.size, 382137917);
    assert_eq!(
        encode_b64(&offer.sha256),
        "stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA="
    );
    assert_eq!(
        encode_b64(&offer.sha1.unwrap()),
        "I6DGNAOrJRUxPbCuLw+AITfiVMo="
    );
    assert!(offer.disable_payload_backoff);
    assert!(!offer.is_delta_payload);
    assert_eq!(
        offer.max_failure_count_per_url,
        DEFAULT_MAX_FAILURE_COUNT_PER_URL
    );
    assert_eq!(offer.poll_interval, None);
}

#[test]
fn optional_response_attributes() {
    let resp = Response::parse(&fixture("response_update_options.xml")).unwrap();
    assert_eq!(resp.daystart.unwrap().elapsed_seconds, 49008);
    let uc = resp.apps[0].update_check.as_ref().unwrap();
    let action = &uc.manifest.as_ref().unwrap().actions[0];
    assert_eq!(
        action.extra,
        [("ChromeOSVersion".to_string(), "3733.1.0".to_string())]
    );
    let CheckOutcome::Update(offer) = uc.validate().unwrap() else {
        panic!()
    };
    assert_eq!(offer.poll_interval, Some(1800));
    assert_eq!(offer.max_failure_count_per_url, 3);
    assert!(!offer.disable_payload_backoff);
    assert_eq!(offer.sha1, None);
    assert_eq!(
        offer.urls,
        ["http://127.0.0.1:8080/v1/payloads/abc/update.gz"]
    );
}

#[test]
fn noupdate_and_error_statuses() {
    let resp = Response::parse(&fixture("response_noupdate.xml")).unwrap();
    let uc = resp.apps[0].update_check.as_ref().unwrap();
    assert_eq!(
        uc.validate(),
        Ok(CheckOutcome::NoUpdate {
            poll_interval: None
        })
    );

    let resp = Response::parse(&fixture("response_errors.xml")).unwrap();
    assert_eq!(resp.apps[0].status, Status::ErrorUnknownApplicationOrGroup);
    assert!(resp.apps[0].status.is_error());
    assert!(resp.apps[0].update_check.is_none());
    let uc = resp.apps[1].update_check.as_ref().unwrap();
    assert_eq!(uc.status, Status::ErrorMaxUpdatesPerPeriodLimitReached);
    assert_eq!(
        uc.validate(),
        Err(InvalidResponse::BadStatus(
            "error-maxUpdatesPerPeriodLimitReached".into()
        ))
    );
}

#[test]
fn status_strings_round_trip() {
    for s in [
        Status::Ok,
        Status::NoUpdate,
        Status::ErrorUnknownApplication,
        Status::ErrorInvalidAppId,
        Status::ErrorInternal,
        Status::ErrorNoPackageFound,
        Status::ErrorUnknownApplicationOrGroup,
        Status::ErrorMaxUpdatesPerPeriodLimitReached,
        Status::ErrorMaxConcurrentUpdatesLimitReached,
        Status::ErrorMaxTimedOutUpdatesLimitReached,
        Status::ErrorUpdatesDisabled,
        Status::ErrorUpdateInProgressOnInstance,
        Status::Other("restricted".into()),
    ] {
        assert_eq!(Status::parse(s.as_str()), s);
    }
    // Case-sensitive like update_engine.
    assert_eq!(Status::parse("OK"), Status::Other("OK".into()));
}

#[test]
fn server_written_response_matches_nebraska_shape() {
    let mut app = ResponseApp::ok(FLATCAR_APP_ID);
    app.ping = Some(Status::Ok);
    app.update_check = Some(UpdateCheckResponse::update(
        vec!["https://example.invalid/amd64-usr/3732.0.0/".into()],
        "3732.0.0",
        "flatcar_production_update.gz",
        382137917,
        Some("I6DGNAOrJRUxPbCuLw+AITfiVMo=".into()),
        "stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA=",
    ));
    app.events.push(Status::Ok);
    let resp = Response::new("fastpatch", 0, vec![app]);
    let xml = resp.to_xml();
    let expected = concat!(
        r#"<response protocol="3.0" server="fastpatch"><daystart elapsed_seconds="0"></daystart>"#,
        r#"<app appid="e96281a6-d1af-4bde-9a0a-97b76e56dc57" status="ok"><ping status="ok"></ping>"#,
        r#"<updatecheck status="ok"><urls><url codebase="https://example.invalid/amd64-usr/3732.0.0/"></url></urls>"#,
        r#"<manifest version="3732.0.0"><packages>"#,
        r#"<package name="flatcar_production_update.gz" hash="I6DGNAOrJRUxPbCuLw+AITfiVMo=" size="382137917" required="true"></package>"#,
        r#"</packages><actions>"#,
        r#"<action event="postinstall" sha256="stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA=" DisablePayloadBackoff="true"></action>"#,
        r#"</actions></manifest></updatecheck><event status="ok"></event></app></response>"#,
    );
    assert!(xml.contains(expected), "{xml}");
    assert_eq!(Response::parse(xml.as_bytes()).unwrap(), resp);
}

#[test]
fn responses_round_trip() {
    for f in [
        "response_update.xml",
        "response_update_options.xml",
        "response_noupdate.xml",
        "response_errors.xml",
    ] {
        let resp = Response::parse(&fixture(f)).unwrap();
        let xml = resp.to_xml();
        assert_eq!(
            Response::parse(xml.as_bytes()).unwrap(),
            resp,
            "{f}:\n{xml}"
        );
    }
}

fn update_response(
    mutate: impl FnOnce(&mut UpdateCheckResponse),
) -> Result<CheckOutcome, InvalidResponse> {
    let mut uc = UpdateCheckResponse::update(
        vec!["http://a/".into()],
        "1.2.3",
        "p.gz",
        10,
        None,
        encode_b64(&[7u8; 32]),
    );
    mutate(&mut uc);
    // Through the wire, so the rules apply to parsed documents.
    let mut app = ResponseApp::ok("x");
    app.update_check = Some(uc);
    let resp = Response::parse(Response::new("t", 0, vec![app]).to_xml().as_bytes()).unwrap();
    resp.apps[0].update_check.as_ref().unwrap().validate()
}

#[test]
fn client_validation_rules() {
    assert!(matches!(
        update_response(|_| {}),
        Ok(CheckOutcome::Update(_))
    ));
    assert_eq!(
        update_response(|u| u.status = Status::Other("Ok".into())),
        Err(InvalidResponse::BadStatus("Ok".into()))
    );
    assert_eq!(
        update_response(|u| u.urls.clear()),
        Err(InvalidResponse::NoUrls)
    );
    assert_eq!(
        update_response(|u| u.manifest = None),
        Err(InvalidResponse::NoManifest)
    );
    assert_eq!(
        update_response(|u| u.manifest.as_mut().unwrap().version = String::new()),
        Err(InvalidResponse::NoVersion)
    );
    assert_eq!(
        update_response(|u| u.manifest.as_mut().unwrap().packages.clear()),
        Err(InvalidResponse::NoPackage)
    );
    assert_eq!(
        update_response(|u| u.manifest.as_mut().unwrap().packages[0].size = "0".into()),
        Err(InvalidResponse::BadSize("0".into()))
    );
    assert_eq!(
        update_response(|u| u.manifest.as_mut().unwrap().packages[0].size = "-5".into()),
        Err(InvalidResponse::BadSize("-5".into()))
    );
    assert_eq!(
        update_response(|u| u.manifest.as_mut().unwrap().actions[0].sha256 = None),
        Err(InvalidResponse::NoSha256)
    );
    assert_eq!(
        update_response(|u| u.manifest.as_mut().unwrap().actions[0].sha256 = Some("AAAA".into())),
        Err(InvalidResponse::BadSha256("AAAA".into()))
    );
    assert_eq!(
        update_response(|u| u.manifest.as_mut().unwrap().actions[0].event = "preinstall".into()),
        Err(InvalidResponse::NoSha256)
    );
    // Only the first package is the payload.
    let Ok(CheckOutcome::Update(offer)) = update_response(|u| {
        let m = u.manifest.as_mut().unwrap();
        let mut second = m.packages[0].clone();
        second.name = "second.gz".into();
        m.packages.push(second);
    }) else {
        panic!()
    };
    assert_eq!(offer.package_name, "p.gz");
}

#[test]
fn malformed_documents_are_errors() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "empty"),
        (b"<request protocol=\"3.0\">", "unclosed"),
        (b"<request protocol=\"3.0\"><app appid=\"x\"></request>", "mismatched"),
        (b"<request protocol=\"2.0\"></request>", "wrong protocol"),
        (b"<request></request>", "no protocol"),
        (b"<response protocol=\"3.0\"></response>", "wrong root"),
        (b"<request protocol=\"3.0\"><app></app></request>", "app without appid"),
        (b"<request protocol=\"3.0\"><app appid=\"a\"><event eventtype=\"x\" eventresult=\"1\"/></app></request>", "bad eventtype"),
        (b"<request protocol=\"3.0\"><app appid=\"a\"><event eventresult=\"1\"/></app></request>", "no eventtype"),
        (b"<request protocol=\"3.0\"><app appid=\"a\"><event eventtype=\"3\" eventresult=\"0\" errorcode=\"99999999999\"/></app></request>", "errorcode range"),
        (b"<!DOCTYPE request [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;\">]><request protocol=\"3.0\" version=\"&b;\"></request>", "entity expansion"),
        (b"<!DOCTYPE request SYSTEM \"http://attacker.invalid/x.dtd\"><request protocol=\"3.0\"></request>", "external DTD"),
        (b"<request protocol=\"3.0\" version=\"&xxe;\"></request>", "undeclared entity"),
        (b"\x00\x01\x02", "binary"),
    ];
    for (doc, what) in cases {
        assert!(Request::parse(doc).is_err(), "{what} parsed");
    }
    assert!(matches!(
        Request::parse(b"<request protocol=\"2.0\"></request>"),
        Err(ParseError::UnsupportedProtocol(v)) if v == "2.0"
    ));
}

#[test]
fn oversized_documents_are_refused_before_parsing() {
    let mut doc = b"<request protocol=\"3.0\">".to_vec();
    while doc.len() < 1024 * 1024 {
        doc.extend_from_slice(b"<app appid=\"x\"></app>");
    }
    doc.extend_from_slice(b"</request>");
    assert!(matches!(
        Request::parse(&doc),
        Err(ParseError::TooLarge { .. })
    ));
    let big = Limits {
        max_bytes: 2 * 1024 * 1024,
        ..Limits::default()
    };
    assert_eq!(
        Request::parse_with_limits(&doc, &big),
        Err(ParseError::LimitExceeded("too many elements"))
    );
    let many_apps = {
        let mut d = b"<request protocol=\"3.0\">".to_vec();
        for _ in 0..40 {
            d.extend_from_slice(b"<app appid=\"x\"></app>");
        }
        d.extend_from_slice(b"</request>");
        d
    };
    assert_eq!(
        Request::parse(&many_apps),
        Err(ParseError::LimitExceeded("too many apps"))
    );
}

#[test]
fn extra_files_follow_the_payload() {
    let uc = UpdateCheckResponse::update(
        vec!["https://cdn.example/3732.0.0/".into()],
        "3732.0.0",
        "flatcar_production_update.gz",
        1000,
        Some(encode_b64(&[1u8; 20])),
        encode_b64(&[2u8; 32]),
    )
    .with_extra_file("oem-azure.gz", 55, encode_b64(&[3u8; 20]), &[4u8; 32]);
    let mut app = ResponseApp::ok("x");
    app.update_check = Some(uc);
    let xml = Response::new("t", 0, vec![app]).to_xml();
    let extra = format!(
        r#"<package name="oem-azure.gz" hash="{}" hash_sha256="{}" size="55" required="false"></package></packages>"#,
        encode_b64(&[3u8; 20]),
        "04".repeat(32)
    );
    assert!(xml.contains(&extra), "{xml}");
    let parsed = Response::parse(xml.as_bytes()).unwrap();
    let uc = parsed.apps[0].update_check.as_ref().unwrap();
    assert_eq!(uc.manifest.as_ref().unwrap().packages.len(), 2);
    let file = &uc.manifest.as_ref().unwrap().packages[1];
    assert_eq!(file.sha256(), Some([4u8; 32]));
    assert_eq!(file.sha1(), Some([3u8; 20]));
    // update_engine takes the first package as the payload and ignores the rest.
    match uc.validate().unwrap() {
        CheckOutcome::Update(o) => {
            assert_eq!(o.package_name, "flatcar_production_update.gz");
            assert_eq!(o.size, 1000);
            assert_eq!(
                o.urls,
                ["https://cdn.example/3732.0.0/flatcar_production_update.gz"]
            );
            assert_eq!(
                o.extra_files,
                [fastpatch_omaha::OfferedFile {
                    name: "oem-azure.gz".into(),
                    size: 55,
                    sha256: [4u8; 32],
                    sha1: Some([3u8; 20]),
                }]
            );
        }
        other => panic!("{other:?}"),
    }
}

/// The fast path takes what clients really send (every request fixture, captured from
/// Flatcar's update_engine and our engine, and our own writer's output) and builds the
/// same tree as the full parser; anything unusual goes to the full parser, which still
/// decides.
#[test]
fn fast_path_takes_real_requests_and_agrees_with_the_full_parser() {
    use fastpatch_omaha::{fast_path_agrees, Limits};
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
