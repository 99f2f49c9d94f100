//! The dashboard over real HTTP on loopback, on SQLite and PostgreSQL: what
//! the pages show, that every write goes through the API's role check (a
//! viewer is refused each one), CSRF, filters and keyset pages, charts.

use crate::dashboard_support;
use crate::support;

use dashboard_support::{
    count_in, csrf_of, group, seed_rollout, Page, Ui, APP, EXPECTED, GROUP, TOTAL,
};
use support::{server, Backend, NowTs, TestServer};

fn group_path() -> String {
    format!("/ui/apps/{APP}/groups/{GROUP}")
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
    let p = ui.get("/ui/instances?status=bogus").await;
    assert_eq!(p.status, 400);
    assert!(p.body.contains("unknown instance status"), "{}", p.body);

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
    support::assert_policy_entry(
        s.handle.store(),
        APP,
        "stable",
        "group stable policy: safe mode off → on; period 3600 s → 600 s; max concurrent \
         unlimited → 3; update timeout 3600 s → 1800 s; office hours off → on; office window \
         mon,tue,wed,thu,fri 09:00–17:00 UTC → mon,tue 08:00–16:30 Europe/Berlin; \
         staged rollout 0 s → 7200 s",
    )
    .await;
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
