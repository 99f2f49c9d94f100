//! The dashboard's login and sessions over real HTTP: guessing slowed per address, opaque
//! sessions shared by server processes and ended by logout, HTTPS with Secure cookies.

use crate::dashboard_support;
use crate::support;

use dashboard_support::{csrf_of, form, Ui};
use support::{server, Backend};

/// Guessing tokens at the login is slowed per address: after the free failures every attempt,
/// even with the right token, waits as long as Retry-After says; then the right token works.
#[tokio::test]
async fn repeated_wrong_tokens_are_slowed_down() {
    use fastpatch_server::throttle::FREE_FAILURES;
    let s = server(Backend::Sqlite).await;
    let mut ui = Ui::new(&s);
    for n in 1..=FREE_FAILURES {
        let p = ui.login("guess").await;
        assert_eq!(p.status, 401, "wrong token {n}: {}", p.body);
    }
    let attempt = |token: &str| {
        ui.http
            .post(format!("{}/ui/login", ui.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("token", token)]))
            .send()
    };
    let r = attempt("admin-token").await.expect("login");
    assert_eq!(r.status().as_u16(), 429, "the right token waits too");
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header");
    assert!((1..=2).contains(&retry), "first wait: {retry} s");
    assert!(r
        .text()
        .await
        .expect("body")
        .contains("Too many wrong tokens"));
    tokio::time::sleep(std::time::Duration::from_secs(retry)).await;
    let p = ui.login("admin-token").await;
    assert_eq!(
        p.status, 303,
        "after the wait the right token works: {}",
        p.body
    );
    assert!(ui.cookie.is_some());
    s.handle.shutdown().await;
}

/// Sessions are opaque and live on the server: the cookie is not the token, another server
/// process on the same database honours it, logout ends it for every process, and a session
/// whose token was removed from the server is over.
async fn sessions_are_opaque_shared_and_revocable(b: Backend) {
    let s = server(b).await;
    let mut ui = Ui::new(&s);
    assert_eq!(ui.login("admin-token").await.status, 303);
    let cookie = ui.cookie.clone().expect("a session cookie");
    let value = cookie.split_once('=').expect("name=value").1;
    assert_eq!(value.len(), 64, "{cookie}");
    assert!(
        !value.contains(&hex::encode("admin-token")) && !value.contains("admin-token"),
        "the cookie does not carry the token: {cookie}"
    );
    // A second process on the same database.
    let other = support::server_on(&s.db_url, tempfile::tempdir().expect("tempdir")).await;
    let mut ui2 = Ui::new(&other);
    ui2.cookie = Some(cookie.clone());
    assert_eq!(
        ui2.get("/ui/").await.status,
        200,
        "the other process knows the session"
    );
    // Logout on the first ends it on both.
    let csrf = csrf_of(&ui.get("/ui/").await.body);
    let out = ui.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(
        (out.status, out.location.as_deref()),
        (303, Some("/ui/login"))
    );
    for (name, u) in [("first", &ui), ("second", &ui2)] {
        let p = u.get("/ui/").await;
        assert_eq!(
            (p.status, p.location.as_deref()),
            (303, Some("/ui/login")),
            "the replayed cookie after logout, {name} process"
        );
    }
    other.handle.shutdown().await;
    // A server that no longer has the token ends its sessions.
    assert_eq!(ui.login("viewer-token").await.status, 303);
    let viewer_cookie = ui.cookie.clone().expect("cookie");
    let without_viewer = support::server_with_db(&s.db_url, |c| c.viewer_tokens.clear()).await;
    let mut ui3 = Ui::new(&without_viewer);
    ui3.cookie = Some(viewer_cookie);
    assert_eq!(
        ui3.get("/ui/").await.status,
        303,
        "the viewer token was removed"
    );
    without_viewer.handle.shutdown().await;
    s.handle.shutdown().await;
}

#[tokio::test]
async fn sessions_are_opaque_shared_and_revocable_sqlite() {
    sessions_are_opaque_shared_and_revocable(Backend::Sqlite).await;
}
#[tokio::test]
async fn sessions_are_opaque_shared_and_revocable_postgres() {
    sessions_are_opaque_shared_and_revocable(Backend::Postgres).await;
}

/// `--tls-cert/--tls-key`: the server speaks HTTPS only, with the given certificate; the
/// Omaha endpoint and the dashboard work over it, and the session cookie is marked Secure.
#[tokio::test]
async fn tls_serves_https_and_marks_the_session_cookie_secure() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = fastpatch_testsupport::TestCa::create(certs.path()).unwrap_or_else(|e| panic!("{e}"));
    let s = support::server_with(Backend::Sqlite, |c| {
        c.tls = Some(fastpatch_server::tls::TlsFiles {
            cert: ca.server_pem.clone(),
            key: ca.server_key.clone(),
        })
    })
    .await;
    let base = s.handle.base_url().to_owned();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let pem = std::fs::read(&ca.ca_pem).expect("CA");
    let https = reqwest::Client::builder()
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).expect("CA PEM"))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let health = https
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("HTTPS");
    assert_eq!(health.status().as_u16(), 200);
    // The Omaha endpoint over TLS.
    let body = support::request("tls-machine", "1.0.0", "stable", vec![], true).to_xml();
    let omaha = https
        .post(format!("{base}/v1/update/"))
        .body(body)
        .send()
        .await
        .expect("Omaha over HTTPS");
    assert_eq!(omaha.status().as_u16(), 200);
    assert!(omaha.text().await.expect("body").contains("<response"));
    // Login: the cookie is Secure.
    let login = https
        .post(format!("{base}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=admin-token")
        .send()
        .await
        .expect("login");
    assert_eq!(login.status().as_u16(), 303);
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a cookie")
        .to_owned();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // Plain HTTP on the same port gets no answer it could use.
    let plain = s
        .http
        .get(base.replace("https://", "http://") + "/health")
        .send()
        .await;
    assert!(
        plain.map(|r| r.status().as_u16() != 200).unwrap_or(true),
        "plain HTTP must not be served"
    );
    s.handle.shutdown().await;
}

/// A certificate file that is not one stops the start with a message naming it.
#[tokio::test]
async fn a_bad_tls_certificate_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate\n").expect("write");
    let mut config = fastpatch_server::Config::for_tests(dir.path());
    config.tls = Some(fastpatch_server::tls::TlsFiles {
        cert: cert.clone(),
        key: dir.path().join("key.pem"),
    });
    let err = match fastpatch_server::Server::start(config).await {
        Ok(_) => panic!("started with a bad certificate"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("cert.pem") && err.contains("certificate"),
        "{err}"
    );
}
