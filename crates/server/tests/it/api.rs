//! The REST admin API: roles, OpenAPI, and the main write paths.

use crate::support;

use fastpatch_omaha::FLATCAR_APP_ID;
use serde_json::{json, Value};
use support::{offered, server, Backend, NowTs};

async fn roles_and_writes(b: Backend) {
    let s = server(b).await;
    let base = format!("{}/api/v1", s.handle.base_url());
    let app = FLATCAR_APP_ID;
    let get = |path: &str, token: Option<&str>| {
        let mut r = s.http.get(format!("{base}{path}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // OpenAPI is public and names the paths.
    let doc: Value = get("/openapi.json", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/apps/{app}/groups/{name}"]["put"].is_object());
    assert!(doc["paths"]["/api/v1/apps/{app}/variants"]["get"].is_object());
    assert!(doc["paths"]["/api/v1/apps/{app}/sync"]["get"].is_object());

    assert_eq!(get("/apps", None).await.unwrap().status(), 401);
    assert_eq!(get("/apps", Some("wrong")).await.unwrap().status(), 401);
    let apps: Value = get("/apps", Some("viewer-token"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(apps[0]["id"], app);

    // Upload a payload: viewer forbidden, admin allowed.
    let upload = |token: &'static str| {
        s.http
            .put(format!(
                "{base}/apps/{app}/packages/3732.0.0/amd64?file_name=flatcar_production_update.gz"
            ))
            .bearer_auth(token)
            .body(vec![42u8; 5000])
            .send()
    };
    assert_eq!(upload("viewer-token").await.unwrap().status(), 403);
    let pkg: Value = upload("admin-token").await.unwrap().json().await.unwrap();
    assert_eq!(pkg["size"], 5000);

    let set = |token: &'static str| {
        s.http
            .put(format!("{base}/apps/{app}/channels/stable"))
            .bearer_auth(token)
            .json(&json!({ "version": "3732.0.0" }))
            .send()
    };
    assert_eq!(set("viewer-token").await.unwrap().status(), 403);
    assert_eq!(set("admin-token").await.unwrap().status(), 200);
    let missing = s
        .http
        .put(format!("{base}/apps/{app}/channels/stable"))
        .bearer_auth("admin-token")
        .json(&json!({ "version": "9.9.9" }))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // Change a policy through the API.
    let mut group: Value = get(&format!("/apps/{app}/groups/stable"), Some("viewer-token"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(group["safe_mode"], true, "safe mode is on by default");
    group["office_tz"] = json!("Mars/Olympus");
    let bad = s
        .http
        .put(format!("{base}/apps/{app}/groups/stable"))
        .bearer_auth("admin-token")
        .json(&group)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    group["office_tz"] = json!("Europe/Berlin");
    group["max_concurrent"] = json!(5);
    let ok: Value = s
        .http
        .put(format!("{base}/apps/{app}/groups/stable"))
        .bearer_auth("admin-token")
        .json(&group)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok["max_concurrent"], 5);
    support::assert_policy_entry(
        s.handle.store(),
        app,
        "stable",
        "group stable policy: max concurrent unlimited → 5; office window \
         mon,tue,wed,thu,fri 09:00–17:00 UTC → mon,tue,wed,thu,fri 09:00–17:00 Europe/Berlin",
    )
    .await;

    // Halt via API; machines get nothing; resume.
    let halt = s
        .http
        .post(format!("{base}/apps/{app}/groups/stable/halt"))
        .bearer_auth("viewer-token")
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(halt.status(), 403);
    let halted: Value = s
        .http
        .post(format!("{base}/apps/{app}/groups/stable/halt"))
        .bearer_auth("admin-token")
        .json(&json!({"reason": "bad release"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(halted["halted"], true);
    assert_eq!(
        offered(&s.check("m1", "3602.2.0", "stable", vec![], true).await),
        None
    );
    s.http
        .post(format!("{base}/apps/{app}/groups/stable/resume"))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap();
    assert!(offered(&s.check("m1", "3602.2.0", "stable", vec![], true).await).is_some());

    // Floors: added and removed with an activity entry each; a second add changes nothing.
    let floor = |method: reqwest::Method| {
        let req = s
            .http
            .request(method, format!("{base}/apps/{app}/floors/3700.0.0"))
            .bearer_auth("admin-token");
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    for _ in 0..2 {
        assert_eq!(floor(reqwest::Method::PUT).await, json!(["3700.0.0"]));
    }
    assert_eq!(floor(reqwest::Method::DELETE).await, json!([]));
    let entries = s.handle.store().activity(None, 5).await.unwrap();
    let floor_entries: Vec<(&str, &str)> = entries
        .iter()
        .filter(|a| a.kind.starts_with("floor_"))
        .map(|a| (a.kind.as_str(), a.message.as_str()))
        .collect();
    assert_eq!(
        floor_entries,
        [
            ("floor_removed", "floor 3700.0.0 removed"),
            (
                "floor_added",
                "floor 3700.0.0 added (by an operator): machines below it pass through it first"
            ),
        ]
    );

    // Instances, keyset pages, detail, stats, activity.
    for i in 0..5 {
        s.check(&format!("z{i}"), "3732.0.0", "stable", vec![], true)
            .await;
    }
    let page: Value = get(
        &format!("/instances?app_id={app}&group=stable&limit=4"),
        Some("viewer-token"),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(page["instances"].as_array().unwrap().len(), 4);
    let next = page["next_after"].as_str().unwrap().to_owned();
    let page2: Value = get(
        &format!("/instances?app_id={app}&group=stable&limit=4&after={next}"),
        Some("viewer-token"),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(page2["instances"].as_array().unwrap().len(), 2);
    assert!(page2["next_after"].is_null());
    let detail: Value = get(&format!("/apps/{app}/instances/m1"), Some("viewer-token"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["instance"]["status"], "granted");
    let stats: Value = get(
        &format!("/apps/{app}/groups/stable/stats"),
        Some("viewer-token"),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(stats["versions"]["3732.0.0"], 5);
    let activity: Value = get("/activity", Some("viewer-token"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = activity
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    for k in [
        "package_published",
        "channel_moved",
        "rollout_halted",
        "rollout_resumed",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    s.handle.shutdown().await;
}

async fn seeded_instances_page_by_keyset(b: Backend) {
    let s = server(b).await;
    let store = s.handle.store();
    assert_eq!(
        store
            .seed_instances(
                FLATCAR_APP_ID,
                "beta",
                "seed-",
                1200,
                "3602.2.0",
                s.clock.now_ts()
            )
            .await
            .unwrap(),
        1200
    );
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM instances")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(total, 1200);
    let mut after = None;
    let mut seen = 0;
    loop {
        let page = store
            .list_instances(
                &fastpatch_server::store::InstanceFilter {
                    app_id: Some(FLATCAR_APP_ID.into()),
                    group: Some("beta".into()),
                    after: after.clone(),
                    limit: Some(500),
                    ..Default::default()
                },
                0,
            )
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        seen += page.len();
        after = page.last().map(|r| r.machine_id.clone());
    }
    assert_eq!(seen, 1200);
    assert_eq!(
        store.version_counts(FLATCAR_APP_ID, "beta").await.unwrap(),
        vec![("3602.2.0".to_string(), 1200)]
    );
    s.handle.shutdown().await;
}

both_backends!(roles_and_writes, seeded_instances_page_by_keyset);
