//! Two server processes' worth of servers on one database, 200 machines at
//! once: grants never exceed the policy.

use crate::support;

use fastpatch_omaha::FLATCAR_APP_ID;
use support::{fresh_database, offered, request, server_on, Backend};

async fn two_servers_never_over_grant(b: Backend) {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let url = fresh_database(b, dir_a.path()).await;
    let a = server_on(&url, dir_a).await;
    // The second server shares the database; payload bytes are not needed for offers.
    let bsrv = server_on(&url, dir_b).await;
    a.publish("3732.0.0", b"payload bytes", Some("stable"))
        .await;
    let store = a.handle.store();
    let mut g = store
        .group(FLATCAR_APP_ID, "stable")
        .await
        .unwrap()
        .unwrap();
    g.safe_mode = false;
    g.max_concurrent = Some(10);
    g.max_updates_per_period = Some(25);
    store.upsert_group(&g).await.unwrap();

    let mut tasks = Vec::new();
    for i in 0..200 {
        let target = if i % 2 == 0 {
            a.url.clone()
        } else {
            bsrv.url.clone()
        };
        let http = a.http.clone();
        tasks.push(tokio::spawn(async move {
            let body = request(
                &format!("machine-{i:03}"),
                "3602.2.0",
                "stable",
                vec![],
                true,
            )
            .to_xml();
            let resp = http.post(&target).body(body).send().await.expect("POST");
            assert_eq!(resp.status(), 200);
            let text = resp.text().await.expect("body");
            let parsed = fastpatch_omaha::Response::parse(text.as_bytes()).expect("response");
            offered(&parsed).is_some()
        }));
    }
    let mut offers = 0;
    for t in tasks {
        if t.await.expect("task") {
            offers += 1;
        }
    }
    let grants = store.grant_count(FLATCAR_APP_ID, "stable").await.unwrap();
    let counts = store.status_counts(FLATCAR_APP_ID, "stable").await.unwrap();
    let granted = counts
        .iter()
        .find(|(s, _)| s == "granted")
        .map(|(_, n)| *n)
        .unwrap_or(0);
    assert_eq!(offers, 10, "offers: {counts:?}");
    assert_eq!(grants, 10);
    assert_eq!(granted, 10);
    let held = counts
        .iter()
        .find(|(s, _)| s == "on-hold")
        .map(|(_, n)| *n)
        .unwrap_or(0);
    assert_eq!(held, 190);
    a.handle.shutdown().await;
    bsrv.handle.shutdown().await;
}

both_backends!(two_servers_never_over_grant);
