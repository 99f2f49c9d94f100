//! Policies through the real endpoint on SQLite and PostgreSQL: office hours
//! in an IANA zone across a DST change, and a staged percentage rollout.

use crate::support;

use chrono::{DateTime, Duration, Utc};
use fastpatch_omaha::{Event, FLATCAR_APP_ID};
use fastpatch_server::policy::rollout_place;
use support::{offered, server, Backend};

const OLD: &str = "3602.2.0";
const NEW: &str = "3732.0.0";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("time").to_utc()
}

async fn office_hours_follow_the_zone_across_dst(b: Backend) {
    let s = server(b).await;
    s.publish(NEW, b"payload", Some("stable")).await;
    let store = s.handle.store();
    let mut g = store
        .group(FLATCAR_APP_ID, "stable")
        .await
        .unwrap()
        .unwrap();
    g.safe_mode = false;
    g.office_hours = true;
    g.office_tz = "Europe/Berlin".into();
    g.office_days = 0b0011111; // Mon–Fri
    g.office_start_minute = 9 * 60;
    g.office_end_minute = 17 * 60;
    store.upsert_group(&g).await.unwrap();
    // Friday 07:30 UTC is 08:30 in Berlin (CET, before the change): closed.
    s.clock.set(at("2026-03-27T07:30:00Z"));
    assert_eq!(
        offered(&s.check("m1", OLD, "stable", vec![], true).await),
        None
    );
    assert_eq!(s.instance_status("m1").await, "on-hold");
    // Saturday noon: closed.
    s.clock.set(at("2026-03-28T11:00:00Z"));
    assert_eq!(
        offered(&s.check("m1", OLD, "stable", vec![], true).await),
        None
    );
    // Monday 07:30 UTC is 09:30 in Berlin (CEST, after the change): open.
    s.clock.set(at("2026-03-30T07:30:00Z"));
    assert!(offered(&s.check("m1", OLD, "stable", vec![], true).await).is_some());
    // Monday 15:30 UTC is 17:30 CEST: closed again for a new machine.
    s.clock.set(at("2026-03-30T15:30:00Z"));
    assert_eq!(
        offered(&s.check("m2", OLD, "stable", vec![], true).await),
        None
    );
    s.handle.shutdown().await;
}

async fn staged_rollout_follows_machine_places(b: Backend) {
    let s = server(b).await;
    let store = s.handle.store();
    let mut g = store
        .group(FLATCAR_APP_ID, "stable")
        .await
        .unwrap()
        .unwrap();
    g.safe_mode = false;
    g.rollout_duration_secs = 1000;
    store.upsert_group(&g).await.unwrap();
    // Pointing the channel starts the rollout now.
    s.publish(NEW, b"payload", Some("stable")).await;
    s.clock.advance(Duration::seconds(250));
    let ids: Vec<String> = (0..200).map(|i| format!("rollout-{i:04}")).collect();
    let mut offers = Vec::new();
    for id in &ids {
        if offered(&s.check(id, OLD, "stable", vec![], true).await).is_some() {
            offers.push(id.clone());
        }
    }
    let expected: Vec<String> = ids
        .iter()
        .filter(|id| rollout_place(id) < 0.25)
        .cloned()
        .collect();
    assert_eq!(
        offers, expected,
        "exactly the machines placed in the first quarter"
    );
    assert!(
        (30..=70).contains(&offers.len()),
        "{} of 200 at 25 %",
        offers.len()
    );
    // At the end of the duration everyone is in.
    s.clock.advance(Duration::seconds(750));
    for id in ids.iter().filter(|id| !expected.contains(id)).take(20) {
        assert!(
            offered(&s.check(id, OLD, "stable", vec![], true).await).is_some(),
            "{id}"
        );
    }
    assert_eq!(
        store.grant_count(FLATCAR_APP_ID, "stable").await.unwrap(),
        expected.len() as i64 + 20
    );
    s.handle.shutdown().await;
}

async fn rollout_finished_when_the_last_machine_completes(b: Backend) {
    let s = server(b).await;
    s.publish(NEW, b"payload", Some("stable")).await;
    let store = s.handle.store();
    let mut g = store
        .group(FLATCAR_APP_ID, "stable")
        .await
        .unwrap()
        .unwrap();
    g.safe_mode = false;
    store.upsert_group(&g).await.unwrap();
    for m in ["a", "b"] {
        assert!(offered(&s.check(m, OLD, "stable", vec![], true).await).is_some());
    }
    let finished = || async {
        store
            .activity(None, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.kind == "rollout_finished")
            .count()
    };
    s.check("a", NEW, "stable", vec![Event::update_complete(OLD)], true)
        .await;
    assert_eq!(finished().await, 0, "b is still on {OLD}");
    s.check("b", NEW, "stable", vec![Event::update_complete(OLD)], true)
        .await;
    assert_eq!(finished().await, 1);
    // A repeated report does not log it twice.
    s.check("b", NEW, "stable", vec![Event::update_complete(OLD)], true)
        .await;
    assert_eq!(finished().await, 1);
    s.handle.shutdown().await;
}

both_backends!(
    office_hours_follow_the_zone_across_dst,
    staged_rollout_follows_machine_places,
    rollout_finished_when_the_last_machine_completes,
);
