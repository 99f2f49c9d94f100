//! The dashboard's chart sampler on both stores: tiers, pruning, and the group page of a group
//! too large to count live.

use crate::dashboard_support::{count_in, Ui, APP};
use crate::support::{server, Backend, NowTs};

use fastpatch_server::store::dashboard as queries;

/// The sampler: one row per (group, dim, key) per tier bucket, a key that
/// vanished within a bucket drops to 0, old buckets are pruned per tier.
async fn sampler_tiers(b: Backend) {
    let s = server(b).await;
    let store = s.handle.store();
    queries::ensure_schema(store).await.expect("schema");
    queries::ensure_schema(store).await.expect("idempotent");
    // A tier boundary after the test clock, so the server's own sampler
    // (which samples at the test clock) writes other buckets.
    let t0: i64 = 83_334 * 21_600; // 2027-01-15 12:00 UTC, a boundary of every tier
    store
        .seed_instances(APP, "beta", "x-", 4, "1.0.0", t0)
        .await
        .expect("seed");
    queries::sample(store, t0 + 10).await.expect("sample");
    for (res, _) in queries::TIERS {
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
    queries::sample(store, t0 + 50).await.expect("sample");
    let rows = queries::samples(store, APP, "beta", 60, t0)
        .await
        .expect("read");
    let n = |key: &str| rows.iter().find(|r| r.key == key).map(|r| r.n);
    assert_eq!((n("undefined"), n("complete")), (Some(0), Some(4)));
    assert_eq!((n("1.0.0"), n("2.0.0")), (Some(0), Some(4)));
    // Four hours later: the 1-minute bucket from t0 is gone, the others stay.
    queries::sample(store, t0 + 4 * 3600).await.expect("sample");
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

/// A group over `LIVE_COUNT_MAX` machines is shown from the newest sample (one bucket
/// read, and the page says when it was counted); a small group is counted live, and
/// a stale sample means a live count.
async fn large_groups_show_the_sample(b: Backend) {
    let s = server(b).await;
    let store = s.handle.store();
    let now = s.clock.now_ts();
    let big = queries::LIVE_COUNT_MAX as u64 + 1;
    store
        .seed_instances(APP, "beta", "b-", big, "1.0.0", now)
        .await
        .expect("seed");
    store
        .seed_instances(APP, "stable", "s-", 3, "1.0.0", now)
        .await
        .expect("seed");
    // The next minute's bucket: the server's own sampler writes the current one.
    queries::sample(store, now + 60).await.expect("sample");
    // Machines that arrive after the sample.
    store
        .seed_instances(APP, "beta", "late-", 2, "1.0.0", now)
        .await
        .expect("seed");
    store
        .seed_instances(APP, "stable", "late-s-", 2, "1.0.0", now)
        .await
        .expect("seed");
    let mut ui = Ui::new(&s);
    ui.login("viewer-token").await;
    let p = ui.get(&format!("/ui/apps/{APP}/groups/beta")).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(
        p.body.contains(r#"id="counts-as-of""#),
        "sampled counts say so"
    );
    assert!(p
        .body
        .contains(&format!(r#"<strong id="total">{big}</strong>"#)));
    assert_eq!(count_in(&p.body, "undefined"), big as i64);
    let p = ui.get(&format!("/ui/apps/{APP}/groups/stable")).await;
    assert!(
        !p.body.contains(r#"id="counts-as-of""#),
        "a small group is live"
    );
    assert!(p.body.contains(r#"<strong id="total">5</strong>"#));
    // The sample goes stale: the big group is counted live again.
    s.clock.advance(chrono::Duration::minutes(10));
    let p = ui.get(&format!("/ui/apps/{APP}/groups/beta")).await;
    assert!(!p.body.contains(r#"id="counts-as-of""#));
    assert!(p
        .body
        .contains(&format!(r#"<strong id="total">{}</strong>"#, big + 2)));
    s.handle.shutdown().await;
}

#[tokio::test]
async fn large_groups_show_the_sample_sqlite() {
    large_groups_show_the_sample(Backend::Sqlite).await;
}
#[tokio::test]
async fn large_groups_show_the_sample_postgres() {
    large_groups_show_the_sample(Backend::Postgres).await;
}

#[tokio::test]
async fn sampler_tiers_sqlite() {
    sampler_tiers(Backend::Sqlite).await;
}
#[tokio::test]
async fn sampler_tiers_postgres() {
    sampler_tiers(Backend::Postgres).await;
}
