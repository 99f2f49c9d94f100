//! Responses against fixtures: Nebraska-shaped responses, our server's writer, round trips,
//! the client's validation rules, malformed and oversized documents, extra files.

use fastpatch_omaha::*;

use crate::protocol::fixture;

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
