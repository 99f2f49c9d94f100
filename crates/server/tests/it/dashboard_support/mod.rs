//! Dashboard test support: a group mid-rollout made through the real Omaha
//! endpoint, chart samples taken along the way, and a cookie-keeping client.

use fastpatch_omaha::{Event, FLATCAR_APP_ID};
use fastpatch_server::store::Group;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use crate::support::{request, NowTs, TestServer};

pub const APP: &str = FLATCAR_APP_ID;
pub const GROUP: &str = "stable";

/// What [`seed_rollout`] leaves in group `stable` (status → machines).
pub const EXPECTED: [(&str, i64); 6] = [
    ("complete", 5),
    ("installed", 2),
    ("downloading", 3),
    ("granted", 9),
    ("error", 1),
    ("undefined", 5),
];
pub const TOTAL: i64 = 25;

/// One machine's check-in with an alias, optional update check and events.
pub async fn check(
    s: &TestServer,
    machine: &str,
    alias: &str,
    version: &str,
    events: Vec<Event>,
    update_check: bool,
) {
    let mut req = request(machine, version, GROUP, events, update_check);
    req.apps[0].machine_alias = Some(alias.into());
    let (status, body) = s.post(req.to_xml()).await;
    assert_eq!(status, 200, "{body}");
}

/// Takes a chart sample at the server's clock.
pub async fn sample(s: &TestServer) {
    fastpatch_server::store::dashboard::ensure_schema(s.handle.store())
        .await
        .expect("schema");
    fastpatch_server::store::dashboard::sample(s.handle.store(), s.clock.now_ts())
        .await
        .expect("sample");
}

/// Group `stable` mid-rollout from 1.0.0 to 2.0.0, through real check-ins,
/// with a chart sample after each of five 10-minute phases.
pub async fn seed_rollout(s: &TestServer) {
    s.publish("1.0.0", b"old payload bytes", None).await;
    s.publish("2.0.0", b"new payload bytes", Some("stable"))
        .await;
    s.publish("2.0.0", b"new payload bytes", Some("beta")).await;
    let store = s.handle.store();
    let mut g = store.group(APP, GROUP).await.expect("db").expect("group");
    // Many machines at once, so the rollout is visibly in flight.
    g.safe_mode = false;
    store.upsert_group(&g).await.expect("policy");
    let step = || chrono::Duration::minutes(10);
    // Phase 1: everybody checks in; 20 get the offer, 5 only ping.
    for i in 0..20 {
        check(
            s,
            &format!("m{i:02}"),
            &format!("node-{i:02}"),
            "1.0.0",
            vec![],
            true,
        )
        .await;
    }
    for i in 0..5 {
        check(
            s,
            &format!("u{i:02}"),
            &format!("idle-{i:02}"),
            "1.0.0",
            vec![],
            false,
        )
        .await;
    }
    sample(s).await;
    // Phase 2: downloads start.
    s.clock.advance(step());
    for i in 0..11 {
        check(
            s,
            &format!("m{i:02}"),
            &format!("node-{i:02}"),
            "1.0.0",
            vec![Event::download_started()],
            false,
        )
        .await;
    }
    sample(s).await;
    // Phase 3: downloads finish and install; one fails its hash check.
    s.clock.advance(step());
    for i in 0..7 {
        check(
            s,
            &format!("m{i:02}"),
            &format!("node-{i:02}"),
            "1.0.0",
            vec![Event::download_finished(), Event::installed()],
            false,
        )
        .await;
    }
    check(
        s,
        "m10",
        "node-10",
        "1.0.0",
        vec![Event::error(fastpatch_omaha::ErrorCode(10))],
        false,
    )
    .await;
    sample(s).await;
    // Phase 4: five reboot into 2.0.0.
    s.clock.advance(step());
    for i in 0..5 {
        check(
            s,
            &format!("m{i:02}"),
            &format!("node-{i:02}"),
            "2.0.0",
            vec![Event::update_complete("1.0.0")],
            true,
        )
        .await;
    }
    sample(s).await;
    s.clock.advance(step());
    sample(s).await;
}

/// A group with `g` applied (helper for policy assertions).
pub async fn group(s: &TestServer) -> Group {
    s.handle
        .store()
        .group(APP, GROUP)
        .await
        .expect("db")
        .expect("group")
}

/// A browser-like client: keeps the session cookie, does not follow redirects.
pub struct Ui {
    pub http: reqwest::Client,
    pub base: String,
    pub cookie: Option<String>,
}

pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
    pub timing: Option<String>,
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of the first `name="csrf"` field on a page.
pub fn csrf_of(body: &str) -> String {
    let at = body
        .find(r#"name="csrf" value=""#)
        .expect("a CSRF field on the page");
    let rest = &body[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').expect("closing quote")].to_owned()
}

impl Ui {
    pub fn new(s: &TestServer) -> Ui {
        Ui {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: s.handle.base_url().to_owned(),
            cookie: None,
        }
    }

    pub async fn send(&self, r: reqwest::RequestBuilder) -> Page {
        let r = match &self.cookie {
            Some(c) => r.header("cookie", c),
            None => r,
        };
        let resp = r.send().await.expect("request");
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (location, timing) = (header("location"), header("server-timing"));
        Page {
            status: resp.status().as_u16(),
            location,
            timing,
            body: resp.text().await.expect("body"),
        }
    }

    pub async fn get(&self, path: &str) -> Page {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, pairs: &[(&str, &str)]) -> Page {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(pairs)),
        )
        .await
    }

    pub async fn login(&mut self, token: &str) -> Page {
        let resp = self
            .http
            .post(format!("{}/ui/login", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("token", token)]))
            .send()
            .await
            .expect("login");
        if let Some(c) = resp.headers().get("set-cookie") {
            let c = c.to_str().expect("ascii cookie");
            assert!(
                c.contains("HttpOnly") && c.contains("SameSite=Strict"),
                "{c}"
            );
            self.cookie = c.split(';').next().map(str::to_owned);
        }
        Page {
            status: resp.status().as_u16(),
            location: None,
            timing: None,
            body: resp.text().await.expect("body"),
        }
    }
}

/// The number in a status row of the group page (`<tr id="count-STATUS">…<td class="num">N`).
pub fn count_in(body: &str, status: &str) -> i64 {
    let at = body
        .find(&format!(r#"id="count-{status}""#))
        .unwrap_or_else(|| panic!("no row for {status}"));
    let rest = &body[at..];
    let num = &rest[rest.find(r#"class="num">"#).expect("count cell") + 12..];
    num[..num.find('<').expect("end")]
        .parse()
        .expect("a number")
}
