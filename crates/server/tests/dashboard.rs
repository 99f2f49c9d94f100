//! The dashboard over real HTTP on loopback, on SQLite and PostgreSQL: what
//! the pages show, that every write goes through the API's role check (a
//! viewer is refused each one), CSRF, filters and keyset pages, charts.

mod dashboard_support;
mod support;

use dashboard_support::{group, seed_rollout, APP, EXPECTED, GROUP, TOTAL};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use support::{server, Backend, NowTs, TestServer};

/// A browser-like client: keeps the session cookie, does not follow redirects.
struct Ui {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    location: Option<String>,
    body: String,
    timing: Option<String>,
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of the first `name="csrf"` field on a page.
fn csrf_of(body: &str) -> String {
    let at = body
        .find(r#"name="csrf" value=""#)
        .expect("a CSRF field on the page");
    let rest = &body[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').expect("closing quote")].to_owned()
}

impl Ui {
    fn new(s: &TestServer) -> Ui {
        Ui {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: s.handle.base_url().to_owned(),
            cookie: None,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Page {
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

    async fn get(&self, path: &str) -> Page {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, pairs: &[(&str, &str)]) -> Page {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(pairs)),
        )
        .await
    }

    async fn login(&mut self, token: &str) -> Page {
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

fn group_path() -> String {
    format!("/ui/apps/{APP}/groups/{GROUP}")
}

/// The number in a status row of the group page (`<tr id="count-STATUS">…<td class="num">N`).
fn count_in(body: &str, status: &str) -> i64 {
    let at = body
        .find(&format!(r#"id="count-{status}""#))
        .unwrap_or_else(|| panic!("no row for {status}"));
    let rest = &body[at..];
    let num = &rest[rest.find(r#"class="num">"#).expect("count cell") + 12..];
    num[..num.find('<').expect("end")]
        .parse()
        .expect("a number")
}

async fn pages_show_the_rollout(b: Backend) {
    let s = server(b).await;
    seed_rollout(&s).await;
    let mut ui = Ui::new(&s);

    // Not logged in: pages redirect to the login form; a wrong token is refused.
    let p = ui.get("/ui/").await;
    assert_eq!((p.status, p.location.as_deref()), (303, Some("/ui/login")));
    assert_eq!(ui.login("not-a-token").await.status, 401);
    assert!(ui.cookie.is_none());
    assert_eq!(ui.login("viewer-token").await.status, 303);

    let p = ui.get("/ui/").await;
    assert_eq!(p.status, 200);
    assert!(p.timing.is_some_and(|t| t.starts_with("app;dur=")));
    assert!(p.body.contains("viewer (read-only)"));
    assert!(
        p.body.contains(r#"<strong class="total">25</strong>"#),
        "overview total"
    );
    assert!(
        p.body.contains(r#"<strong class="on-target">5</strong>"#),
        "5 on 2.0.0"
    );
    assert!(p.body.contains("failed: <strong>1</strong>"));
    assert!(!p.body.contains("HALTED"));
    assert!(
        p.body.contains("Counts as of the sample"),
        "a fresh sample serves the overview"
    );
    // Without a fresh sample the overview counts live, with the same numbers.
    s.clock.advance(chrono::Duration::minutes(10));
    let p = ui.get("/ui/").await;
    assert!(p.body.contains("Counts are live."));
    assert!(
        p.body.contains(r#"<strong class="total">25</strong>"#),
        "live total"
    );
    assert!(p.body.contains("failed: <strong>1</strong>"));

    let p = ui.get(&group_path()).await;
    assert_eq!(p.status, 200, "{}", p.body);
    for (status, n) in EXPECTED {
        assert_eq!(count_in(&p.body, status), n, "{status}");
    }
    assert!(p
        .body
        .contains(&format!(r#"<strong id="total">{TOTAL}</strong>"#)));
    assert!(p.body.contains("Rollout running"));
    // A viewer sees no write controls.
    for control in ["Pause rollout", "Save policy", r#"action="/ui/apps"#] {
        assert!(!p.body.contains(control), "viewer page has {control}");
    }
    assert!(
        p.body.contains("Update timeout"),
        "the policy is shown read-only"
    );

    // Charts: five samples in the last hour; the latest bucket's numbers in words.
    let p = ui.get(&format!("{}?range=1h", group_path())).await;
    assert!(
        p.body.contains("complete: <strong>5</strong>"),
        "status legend"
    );
    assert!(
        p.body.contains("2.0.0: <strong>5</strong>"),
        "version legend"
    );
    assert!(p.body.contains("1.0.0: <strong>20</strong>"));
    assert_eq!(
        p.body.matches("<tr><td>").count(),
        10,
        "5 buckets × 2 charts in the tables"
    );
    let p = ui.get(&format!("{}?range=30d", group_path())).await;
    assert!(
        p.body.contains("complete: <strong>5</strong>"),
        "hourly tier too"
    );

    // Instance list: filters, search by alias and IP, the instance page in words.
    let p = ui
        .get(&format!("/ui/instances?app={APP}&status=downloading"))
        .await;
    assert_eq!(p.body.matches(r#"<td class="alias">"#).count(), 3);
    let p = ui.get("/ui/instances?q=node-10").await;
    assert_eq!(p.body.matches(r#"<td class="alias">"#).count(), 1);
    assert!(p.body.contains(">m10</a>"));
    let p = ui.get("/ui/instances?q=nobody").await;
    assert!(p.body.contains("No instance matches."));
    let p = ui.get(&format!("/ui/apps/{APP}/instances/m10")).await;
    assert!(
        p.body
            .contains("the downloaded payload&#39;s hash does not match the offer")
            || p.body
                .contains("the downloaded payload's hash does not match the offer"),
        "{}",
        p.body
    );
    assert!(p.body.contains("update failed"));
    let p = ui.get(&format!("/ui/apps/{APP}/instances/m00")).await;
    assert!(p
        .body
        .contains("update complete: rebooted into the new version"));
    assert_eq!(
        ui.get(&format!("/ui/apps/{APP}/instances/nope"))
            .await
            .status,
        404
    );
    assert_eq!(ui.get("/ui/instances?status=bogus").await.status, 400);

    let p = ui.get("/ui/packages").await;
    assert_eq!(p.status, 303);
    let p = ui.get(p.location.as_deref().expect("location")).await;
    assert!(p.body.contains("2.0.0") && !p.body.contains("Publish a payload"));
    let p = ui.get("/ui/activity").await;
    assert!(
        p.body.contains("channel stable now points at 2.0.0"),
        "{}",
        p.body
    );
    s.handle.shutdown().await;
}

/// Every write control, posted by a viewer with a valid session and CSRF
/// token, is refused by the API's own check, and nothing changes.
async fn viewer_writes_are_refused(b: Backend) {
    let s = server(b).await;
    seed_rollout(&s).await;
    let mut ui = Ui::new(&s);
    ui.login("viewer-token").await;
    let csrf = csrf_of(&ui.get(&group_path()).await.body);
    let before_group = group(&s).await;
    let before_channels = s.handle.store().channels(APP).await.expect("db");
    let before_pkgs = s.handle.store().packages(APP).await.expect("db").len();
    let gp = group_path();
    let policy = [
        ("csrf", csrf.as_str()),
        ("channel", "beta"),
        ("period_secs", "60"),
        ("update_timeout_secs", "60"),
        ("start", "09:00"),
        ("end", "17:00"),
        ("office_tz", "UTC"),
        ("rollout_duration_secs", "0"),
    ];
    let posts: Vec<(String, Vec<(&str, &str)>)> = vec![
        (
            format!("{gp}/pause"),
            vec![("csrf", &csrf), ("reason", "viewer")],
        ),
        (format!("{gp}/resume"), vec![("csrf", &csrf)]),
        (format!("{gp}/policy"), policy.to_vec()),
        (
            format!("/ui/apps/{APP}/channels/alpha/set"),
            vec![("csrf", &csrf), ("version", "1.0.0")],
        ),
        (
            format!("/ui/apps/{APP}/channels/alpha/promote"),
            vec![("csrf", &csrf), ("from", "stable")],
        ),
    ];
    for (path, pairs) in &posts {
        let p = ui.post(path, pairs).await;
        assert_eq!(p.status, 403, "{path}: {}", p.body);
        assert!(p.body.contains("this needs an admin"), "{path}: {}", p.body);
    }
    let p = publish(&ui, &csrf, "9.9.9").await;
    assert_eq!(p.status, 403, "{}", p.body);
    assert_eq!(group(&s).await, before_group);
    assert_eq!(
        s.handle.store().channels(APP).await.expect("db"),
        before_channels
    );
    assert_eq!(
        s.handle.store().packages(APP).await.expect("db").len(),
        before_pkgs
    );
    // The confirmation page offers a viewer no button.
    let p = ui
        .get(&format!(
            "/ui/apps/{APP}/channels/alpha/promote?from=stable"
        ))
        .await;
    assert!(p.body.contains("Only an admin can promote") && !p.body.contains("confirm-promote"));
    s.handle.shutdown().await;
}

async fn publish(ui: &Ui, csrf: &str, version: &str) -> Page {
    let boundary = "fastpatch-test-boundary";
    let mut body = String::new();
    for (k, v) in [("csrf", csrf), ("version", version), ("arch", "amd64")] {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"flatcar_production_update.gz\"\r\nContent-Type: application/octet-stream\r\n\r\npayload {version}\r\n--{boundary}--\r\n"));
    ui.send(
        ui.http
            .post(format!("{}/ui/apps/{APP}/packages/upload", ui.base))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body),
    )
    .await
}

async fn admin_writes_take_effect(b: Backend) {
    let s = server(b).await;
    seed_rollout(&s).await;
    let mut ui = Ui::new(&s);
    ui.login("admin-token").await;
    let page = ui.get(&group_path()).await;
    assert!(page.body.contains("Pause rollout") && page.body.contains("Save policy"));
    let csrf = csrf_of(&page.body);
    let gp = group_path();

    // CSRF: a wrong token is refused and changes nothing.
    let p = ui
        .post(
            &format!("{gp}/pause"),
            &[("csrf", "forged"), ("reason", "x")],
        )
        .await;
    assert_eq!(p.status, 403);
    assert!(!group(&s).await.halted);

    // Pause → halted with the reason, shown loudly on the group page and the overview.
    let p = ui
        .post(
            &format!("{gp}/pause"),
            &[("csrf", &csrf), ("reason", "bad kernel")],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let g = group(&s).await;
    assert!(g.halted);
    assert_eq!(g.halted_reason.as_deref(), Some("bad kernel"));
    let p = ui.get(p.location.as_deref().expect("redirect")).await;
    assert!(p.body.contains("Rollout paused."));
    assert!(p
        .body
        .contains(r#"<strong id="halt-reason">bad kernel</strong>"#));
    assert!(p.body.contains("Resume rollout"));
    let p = ui.get("/ui/").await;
    assert!(p.body.contains("HALTED") && p.body.contains("bad kernel"));
    let p = ui.post(&format!("{gp}/resume"), &[("csrf", &csrf)]).await;
    assert_eq!(p.status, 303);
    assert!(!group(&s).await.halted);

    // Policy form → the API's PUT (validation included).
    let mut policy = vec![
        ("csrf", csrf.as_str()),
        ("channel", "stable"),
        ("updates_enabled", "on"),
        ("safe_mode", "on"),
        ("max_concurrent", "3"),
        ("max_updates_per_period", ""),
        ("period_secs", "600"),
        ("update_timeout_secs", "1800"),
        ("office_hours", "on"),
        ("mon", "on"),
        ("tue", "on"),
        ("start", "08:00"),
        ("end", "16:30"),
        ("office_tz", "Europe/Berlin"),
        ("rollout_duration_secs", "7200"),
    ];
    let p = ui.post(&format!("{gp}/policy"), &policy).await;
    assert_eq!(p.status, 303, "{}", p.body);
    let g = group(&s).await;
    assert_eq!(g.max_concurrent, Some(3));
    assert_eq!(
        (g.office_days, g.office_start_minute, g.office_end_minute),
        (0b11, 480, 990)
    );
    assert_eq!(g.office_tz, "Europe/Berlin");
    assert!(g.safe_mode && g.office_hours);
    policy[13] = ("office_tz", "Mars/Olympus");
    let p = ui.post(&format!("{gp}/policy"), &policy).await;
    assert_eq!(p.status, 400);
    assert!(p.body.contains("IANA"), "{}", p.body);
    assert_eq!(group(&s).await.office_tz, "Europe/Berlin");

    // Channels: point alpha at 1.0.0, then promote stable (2.0.0) to alpha after the confirmation.
    let p = ui
        .post(
            &format!("/ui/apps/{APP}/channels/alpha/set"),
            &[("csrf", &csrf), ("version", "1.0.0")],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(alpha(&s).await.as_deref(), Some("1.0.0"));
    let confirm = ui
        .get(&format!(
            "/ui/apps/{APP}/channels/alpha/promote?from=stable"
        ))
        .await;
    assert!(
        confirm
            .body
            .contains(r#"<strong class="mono" id="promote-version">2.0.0</strong>"#),
        "{}",
        confirm.body
    );
    assert_eq!(
        alpha(&s).await.as_deref(),
        Some("1.0.0"),
        "the confirmation page changes nothing"
    );
    let p = ui
        .post(
            &format!("/ui/apps/{APP}/channels/alpha/promote"),
            &[("csrf", &csrf), ("from", "stable")],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(alpha(&s).await.as_deref(), Some("2.0.0"));
    let p = ui.get(p.location.as_deref().expect("redirect")).await;
    assert!(p.body.contains("Promoted 2.0.0 from stable to alpha."));

    // Publish through the upload form: stored, hashed, listed.
    let p = publish(&ui, &csrf, "3.0.0").await;
    assert_eq!(p.status, 303, "{}", p.body);
    let pkg = s
        .handle
        .store()
        .find_package(APP, "3.0.0", "amd64")
        .await
        .expect("db")
        .expect("published");
    assert_eq!(pkg.size, "payload 3.0.0".len() as i64);
    assert_eq!(pkg.file_name, "flatcar_production_update.gz");
    let acts = s.handle.store().activity(None, 50).await.expect("db");
    for kind in [
        "rollout_halted",
        "rollout_resumed",
        "group_policy_changed",
        "channel_promoted",
        "package_published",
    ] {
        assert!(acts.iter().any(|a| a.kind == kind), "activity has {kind}");
    }
    // Logging out needs the CSRF token too, then the cookie is cleared.
    assert_eq!(ui.post("/ui/logout", &[("csrf", "nope")]).await.status, 403);
    let p = ui.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(p.status, 303);
    s.handle.shutdown().await;
}

async fn alpha(s: &TestServer) -> Option<String> {
    s.handle
        .store()
        .channel(APP, "alpha")
        .await
        .expect("db")
        .and_then(|c| c.version)
}

async fn keyset_pages(b: Backend) {
    let s = server(b).await;
    let store = s.handle.store();
    let now = s.clock.now_ts();
    store
        .seed_instances(APP, "beta", "b-", 120, "1.0.0", now)
        .await
        .expect("seed");
    store
        .seed_instances(APP, "stable", "s-", 30, "1.0.0", now - 10 * 86400)
        .await
        .expect("seed");
    let mut ui = Ui::new(&s);
    ui.login("viewer-token").await;
    let mut seen = Vec::new();
    let mut path = format!("/ui/instances?app={APP}&group=beta");
    let mut pages = 0;
    loop {
        let p = ui.get(&path).await;
        pages += 1;
        let ids: Vec<String> = p
            .body
            .match_indices("/instances/b-")
            .map(|(i, _)| p.body[i + 11..i + 21].to_owned())
            .collect();
        assert!(ids.len() <= 50);
        seen.extend(ids);
        match p.body.find(r#"id="next" rel="next" href=""#) {
            Some(at) => {
                let rest = &p.body[at + 27..];
                path = rest[..rest.find('"').expect("end")].replace("&amp;", "&");
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 120, "every instance once");
    assert_eq!(sorted, seen, "in id order");
    // Silent for more than 5 days: only the 30 that last checked in 10 days ago.
    let p = ui
        .get(&format!("/ui/instances?app={APP}&silent_days=5"))
        .await;
    assert_eq!(p.body.matches(r#"<td class="alias">"#).count(), 30);
    assert!(!p.body.contains("/instances/b-"));
    let p = ui
        .get(&format!("/ui/instances?app={APP}&silent_days=x"))
        .await;
    assert_eq!(p.status, 400);
    // Search by IP (seeded as 10.0.0.n).
    let p = ui
        .get(&format!("/ui/instances?app={APP}&group=beta&q=10.0.0.7"))
        .await;
    assert!(p.body.contains(">b-00000007</a>"), "{}", p.body);
    assert_eq!(p.body.matches(r#"<td class="alias">"#).count(), 1);
    s.handle.shutdown().await;
}

#[tokio::test]
async fn pages_show_the_rollout_sqlite() {
    pages_show_the_rollout(Backend::Sqlite).await;
}
#[tokio::test]
async fn pages_show_the_rollout_postgres() {
    pages_show_the_rollout(Backend::Postgres).await;
}
#[tokio::test]
async fn viewer_writes_are_refused_sqlite() {
    viewer_writes_are_refused(Backend::Sqlite).await;
}
#[tokio::test]
async fn viewer_writes_are_refused_postgres() {
    viewer_writes_are_refused(Backend::Postgres).await;
}
#[tokio::test]
async fn admin_writes_take_effect_sqlite() {
    admin_writes_take_effect(Backend::Sqlite).await;
}
#[tokio::test]
async fn admin_writes_take_effect_postgres() {
    admin_writes_take_effect(Backend::Postgres).await;
}
#[tokio::test]
async fn keyset_pages_sqlite() {
    keyset_pages(Backend::Sqlite).await;
}
#[tokio::test]
async fn keyset_pages_postgres() {
    keyset_pages(Backend::Postgres).await;
}

/// The sampler: one row per (group, dim, key) per tier bucket, a key that
/// vanished within a bucket drops to 0, old buckets are pruned per tier.
async fn sampler_tiers(b: Backend) {
    use fastpatch_server::dashboard::{queries, rollup};
    let s = server(b).await;
    let store = s.handle.store();
    rollup::ensure_schema(store).await.expect("schema");
    rollup::ensure_schema(store).await.expect("idempotent");
    // A tier boundary after the test clock, so the server's own sampler
    // (which samples at the test clock) writes other buckets.
    let t0: i64 = 83_334 * 21_600; // 2027-01-15 12:00 UTC, a boundary of every tier
    store
        .seed_instances(APP, "beta", "x-", 4, "1.0.0", t0)
        .await
        .expect("seed");
    rollup::sample(store, t0 + 10).await.expect("sample");
    for (res, _) in rollup::TIERS {
        let rows = queries::samples(store, APP, "beta", res, t0)
            .await
            .expect("read");
        assert_eq!(rows.len(), 2, "res {res}: one status and one version");
        assert!(rows.iter().all(|r| r.n == 4 && r.bucket == t0));
    }
    // Same minute, the machines moved on: undefined drops to 0, 2.0.0 appears.
    sqlx::query("UPDATE instances SET status = 'complete', version = '2.0.0'")
        .execute(store.pool())
        .await
        .expect("update");
    rollup::sample(store, t0 + 50).await.expect("sample");
    let rows = queries::samples(store, APP, "beta", 60, t0)
        .await
        .expect("read");
    let n = |key: &str| rows.iter().find(|r| r.key == key).map(|r| r.n);
    assert_eq!((n("undefined"), n("complete")), (Some(0), Some(4)));
    assert_eq!((n("1.0.0"), n("2.0.0")), (Some(0), Some(4)));
    // Four hours later: the 1-minute bucket from t0 is gone, the others stay.
    rollup::sample(store, t0 + 4 * 3600).await.expect("sample");
    let minute = queries::samples(store, APP, "beta", 60, t0)
        .await
        .expect("read");
    assert!(
        minute.iter().all(|r| r.bucket == t0 + 4 * 3600),
        "{minute:?}"
    );
    let hourly = queries::samples(store, APP, "beta", 3600, t0)
        .await
        .expect("read");
    assert!(hourly.iter().any(|r| r.bucket == t0));
    assert!(hourly.iter().any(|r| r.bucket == t0 + 4 * 3600));
    s.handle.shutdown().await;
}

#[tokio::test]
async fn sampler_tiers_sqlite() {
    sampler_tiers(Backend::Sqlite).await;
}
#[tokio::test]
async fn sampler_tiers_postgres() {
    sampler_tiers(Backend::Postgres).await;
}

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
