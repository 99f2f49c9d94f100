//! The Omaha route as a client sees it. `POST /v1/update/` is served before the router
//! (`front.rs`); these check that it answers exactly as the router's route would: both
//! spellings of the path, the XML content type, the peer's address recorded, and the
//! router's answers for other methods and nearby paths.

use crate::support;

use fastpatch_omaha::FLATCAR_APP_ID;

#[tokio::test]
async fn both_spellings_answer_xml_and_record_the_peer() {
    let s = support::server(support::Backend::Sqlite).await;
    let base = s.handle.base_url();
    for (path, machine) in [("/v1/update/", "m-slash"), ("/v1/update", "m-bare")] {
        let body = support::request(machine, "3732.0.0", "stable", vec![], true).to_xml();
        let r = s
            .http
            .post(format!("{base}{path}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/xml; charset=utf-8"),
            "{path}"
        );
        let text = r.text().await.unwrap();
        assert!(text.contains("<updatecheck status="), "{path}: {text}");
        let row = s
            .handle
            .store()
            .instance(FLATCAR_APP_ID, machine)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{path}: the check-in was not recorded"));
        assert_eq!(row.ip.as_deref(), Some("127.0.0.1"), "{path}");
    }
    s.handle.shutdown().await;
}

#[tokio::test]
async fn other_methods_and_paths_get_the_routers_answers() {
    let s = support::server(support::Backend::Sqlite).await;
    let base = s.handle.base_url();
    let r = s
        .http
        .get(format!("{base}/v1/update/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let allow = r
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(allow.contains("POST"), "allow: {allow}");
    for path in ["/v1/updates", "/v1/update/x", "/V1/update/"] {
        let r = s
            .http
            .post(format!("{base}{path}"))
            .body("<request/>")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    s.handle.shutdown().await;
}
