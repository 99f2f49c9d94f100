//! Recent check-ins in memory: a re-check with nothing new writes nothing at
//! once; its last-check time reaches the database on the flush interval and
//! at graceful shutdown, never later.

use crate::support;

use std::time::Duration;

use fastpatch_omaha::FLATCAR_APP_ID;
use fastpatch_server::Store;
use support::{fresh_database, offered, server_with, Backend, NowTs};

const V: &str = "3732.0.0";

/// `last_check_at` as the database holds it (a second pool: no in-memory state).
async fn stored_last_check(db_url: &str, machine: &str) -> i64 {
    let other = Store::open(db_url).await.expect("second pool");
    let row = other
        .instance(FLATCAR_APP_ID, machine)
        .await
        .expect("db")
        .expect("instance");
    other.close().await;
    row.last_check_at
}

async fn shutdown_writes_pending_last_checks(b: Backend) {
    let s = server_with(b, |c| c.checkin_flush = Duration::from_secs(3600)).await;
    let t0 = s.clock.now_ts();
    assert_eq!(
        offered(&s.check("m1", V, "stable", vec![], true).await),
        None
    );
    assert_eq!(
        stored_last_check(&s.db_url, "m1").await,
        t0,
        "a new machine is written at once"
    );
    s.clock.advance(chrono::Duration::seconds(30));
    s.check("m1", V, "stable", vec![], true).await;
    s.clock.advance(chrono::Duration::seconds(20));
    s.check("m1", V, "stable", vec![], true).await;
    // Nothing written yet; the serving store already reports the newer time.
    assert_eq!(stored_last_check(&s.db_url, "m1").await, t0);
    let live = s
        .handle
        .store()
        .instance(FLATCAR_APP_ID, "m1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.last_check_at, t0 + 50);
    // A changed fact (new version) is written at once, not batched.
    s.check("m1", "3800.0.0", "stable", vec![], true).await;
    assert_eq!(
        s.handle
            .store()
            .instance(FLATCAR_APP_ID, "m1")
            .await
            .unwrap()
            .unwrap()
            .version,
        "3800.0.0"
    );
    let db_url = s.db_url.clone();
    s.handle.shutdown().await;
    assert_eq!(stored_last_check(&db_url, "m1").await, t0 + 50);
}

async fn flush_interval_writes_last_checks(b: Backend) {
    let s = server_with(b, |c| c.checkin_flush = Duration::from_millis(100)).await;
    let t0 = s.clock.now_ts();
    s.check("m1", V, "stable", vec![], true).await;
    s.clock.advance(chrono::Duration::seconds(40));
    s.check("m1", V, "stable", vec![], true).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let at = stored_last_check(&s.db_url, "m1").await;
        if at == t0 + 40 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not flushed: {at}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.handle.shutdown().await;
}

/// A status change this server makes is seen by the next check-in at once,
/// even though that check-in is served from memory.
async fn status_changes_update_the_cached_row(b: Backend) {
    let s = server_with(b, |_| {}).await;
    s.publish(V, b"payload bytes", Some("stable")).await;
    let store = s.handle.store();
    let mut g = store
        .group(FLATCAR_APP_ID, "stable")
        .await
        .unwrap()
        .unwrap();
    g.safe_mode = false;
    g.max_concurrent = Some(1);
    store.upsert_group(&g).await.unwrap();
    assert!(offered(&s.check("m1", "3602.2.0", "stable", vec![], true).await).is_some());
    // m1 fails: its grant no longer counts, so m2 gets the one slot.
    s.check(
        "m1",
        "3602.2.0",
        "stable",
        vec![fastpatch_omaha::Event::rolled_back("2.0.0")],
        false,
    )
    .await;
    assert_eq!(s.instance_status("m1").await, "error");
    assert!(offered(&s.check("m2", "3602.2.0", "stable", vec![], true).await).is_some());
    // Were m1's cached row still "granted", it would be offered its old grant again.
    assert!(offered(&s.check("m1", "3602.2.0", "stable", vec![], true).await).is_none());
    assert_eq!(
        store.grant_count(FLATCAR_APP_ID, "stable").await.unwrap(),
        2
    );
    s.handle.shutdown().await;
}

both_backends!(
    shutdown_writes_pending_last_checks,
    flush_interval_writes_last_checks,
    status_changes_update_the_cached_row,
);

/// SQLite: the checkpoint the flush job runs leaves an empty write-ahead log, with every
/// row in the database file (a fresh connection reads them back).
#[tokio::test]
async fn checkpoint_empties_the_sqlite_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_data_dir(dir.path()).await.expect("open");
    let now = 1_800_000_000;
    store
        .seed_instances(FLATCAR_APP_ID, "stable", "wal-", 2_000, V, now)
        .await
        .expect("seed");
    let wal = dir.path().join("fastpatch.db-wal");
    let len = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(len() > 0, "the writes went to the log first");
    assert!(store.checkpoint().await.expect("checkpoint"), "completed");
    assert_eq!(len(), 0, "log truncated");
    let other = Store::open_data_dir(dir.path()).await.expect("reopen");
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM instances")
        .fetch_one(other.pool())
        .await
        .expect("count");
    assert_eq!(n, 2_000);
    store.close().await;
    other.close().await;
}

/// PostgreSQL: a flush commits batch by batch. While one batch waits for a row another
/// transaction holds, the batches before it are already in the database and hold no
/// locks (one transaction over the whole flush kept them all locked, and every event or
/// grant for those machines waited behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_commits_batch_by_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = fresh_database(Backend::Postgres, dir.path()).await;
    let store = Store::open(&url).await.expect("open");
    let t0 = 1_800_000_000;
    let machines: Vec<String> = (0..1200).map(|i| format!("b-{i:05}")).collect();
    let check = |m: &str, at: i64| {
        let store = store.clone();
        let m = m.to_owned();
        async move {
            let c = fastpatch_server::store::CheckIn {
                app_id: FLATCAR_APP_ID,
                machine_id: &m,
                alias: None,
                ip: None,
                version: V,
                arch: "amd64",
                group: "stable",
            };
            store.check_in(&c, at).await.expect("check-in");
        }
    };
    for m in &machines {
        check(m, t0).await;
    }
    // The second check-ins are served from memory: only pending timestamps.
    for m in &machines {
        check(m, t0 + 10).await;
    }
    // Another transaction holds the row of the machine that sorts last (the last batch).
    let mut holder = store.pool().begin().await.expect("begin");
    sqlx::query(
        "SELECT machine_id FROM instances WHERE app_id = $1 AND machine_id = $2 FOR UPDATE",
    )
    .bind(FLATCAR_APP_ID)
    .bind("b-01199")
    .fetch_one(&mut *holder)
    .await
    .expect("lock a row");
    let flushing = tokio::spawn({
        let store = store.clone();
        async move { store.flush_last_checks(t0 + 10).await }
    });
    let written = || async {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE last_check_at = $1")
            .bind(t0 + 10)
            .fetch_one(store.pool())
            .await
            .expect("count");
        n
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while written().await < 1000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first two batches of 500 are not in the database while the last one waits ({} are)",
            written().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !flushing.is_finished(),
        "the last batch waits for the held row"
    );
    holder.rollback().await.expect("release");
    assert_eq!(flushing.await.expect("task").expect("flush"), 1200);
    assert_eq!(written().await, 1200);
    store.close().await;
}
