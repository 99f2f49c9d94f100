//! Dashboard test support: a group mid-rollout made through the real Omaha
//! endpoint, chart samples taken along the way, and a cookie-keeping client.
#![allow(dead_code)]

use fastpatch_omaha::{Event, FLATCAR_APP_ID};
use fastpatch_server::store::Group;

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
    fastpatch_server::dashboard::rollup::ensure_schema(s.handle.store())
        .await
        .expect("schema");
    fastpatch_server::dashboard::rollup::sample(s.handle.store(), s.clock.now_ts())
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
    check(s, "m10", "node-10", "1.0.0", vec![Event::error(10)], false).await;
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
