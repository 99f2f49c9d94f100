//! The semaphore on a real etcd (Debian etcd-server, started per test on free loopback ports).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fastpatch_locksmith::etcd::{EtcdConfig, EtcdStore};
use fastpatch_locksmith::semaphore::{LockOutcome, Semaphore, SemaphoreError};
use fastpatch_locksmith::store::{CoordError, Coordinator, RetryPolicy};
use fastpatch_locksmith::testsupport::EtcdServer;

fn etcd() -> EtcdServer {
    EtcdServer::start().unwrap_or_else(|e| panic!("cannot start etcd: {e}"))
}

async fn store(e: &EtcdServer) -> EtcdStore {
    EtcdStore::connect(&EtcdConfig::local().with_endpoints(&e.endpoint()))
        .await
        .expect("connect")
}

async fn raw_get(s: &EtcdStore, key: &str) -> Option<String> {
    let r = s.client().get(key, None).await.expect("get");
    r.kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_string())
}

#[tokio::test]
async fn creates_key_like_locksmith_and_writes_its_json() {
    let e = etcd();
    let s = store(&e).await;
    let c = Coordinator::new(s.clone(), "", RetryPolicy::short());
    assert_eq!(c.get().await.unwrap(), Semaphore::fresh());
    let key = "coreos.com/updateengine/rebootlock/semaphore";
    assert_eq!(
        raw_get(&s, key).await.as_deref(),
        Some(r#"{"semaphore":1,"max":1,"holders":null}"#)
    );
    c.set_max(3).await.unwrap();
    c.lock("bbbb", None).await.unwrap();
    c.lock("aaaa", None).await.unwrap();
    assert_eq!(
        raw_get(&s, key).await.as_deref(),
        Some(r#"{"semaphore":1,"max":3,"holders":["aaaa","bbbb"]}"#)
    );
    c.unlock("aaaa").await.unwrap();
    c.unlock("bbbb").await.unwrap();
    assert_eq!(
        raw_get(&s, key).await.as_deref(),
        Some(r#"{"semaphore":3,"max":3,"holders":[]}"#)
    );
    // Groups live under their own query-escaped key with their own max.
    let g = Coordinator::new(s.clone(), "db west", RetryPolicy::short());
    g.lock("cccc", None).await.unwrap();
    assert_eq!(
        raw_get(
            &s,
            "coreos.com/updateengine/rebootlock/groups/db+west/semaphore"
        )
        .await
        .as_deref(),
        Some(r#"{"semaphore":0,"max":1,"holders":["cccc"]}"#)
    );
}

#[tokio::test]
async fn reads_and_updates_a_locksmith_written_key() {
    let e = etcd();
    let s = store(&e).await;
    let key = "coreos.com/updateengine/rebootlock/semaphore";
    s.client()
        .put(key, r#"{"semaphore":2,"max":2,"holders":null}"#, None)
        .await
        .unwrap();
    let c = Coordinator::new(s.clone(), "", RetryPolicy::short());
    assert_eq!(c.get().await.unwrap().holders, None);
    assert_eq!(c.lock("m1", None).await.unwrap(), LockOutcome::Taken);
    assert_eq!(
        raw_get(&s, key).await.as_deref(),
        Some(r#"{"semaphore":1,"max":2,"holders":["m1"]}"#)
    );
    // Re-lock by a holder of a full semaphore succeeds (locksmith#58).
    c.lock("m2", None).await.unwrap();
    assert_eq!(c.lock("m1", None).await.unwrap(), LockOutcome::AlreadyHeld);
    let err = c.lock("m3", None).await.unwrap_err();
    assert_eq!(err.to_string(), "semaphore is at 0");
    assert!(matches!(
        c.unlock("m3").await,
        Err(CoordError::Semaphore(SemaphoreError::NotHolder))
    ));
    assert!(c.set_max(1).await.is_err());
    // Garbage in the key is an error, not a silent overwrite.
    s.client().put(key, "not json", None).await.unwrap();
    assert!(c.lock("m1", None).await.is_err());
    assert_eq!(raw_get(&s, key).await.as_deref(), Some("not json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_lockers_max_three() {
    let e = etcd();
    let s = store(&e).await;
    let c = Coordinator::new(s.clone(), "", RetryPolicy::patient(Duration::from_secs(30)));
    c.set_max(3).await.unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = vec![];
    for i in 0..50 {
        let c = c.clone();
        let inside = inside.clone();
        let peak = peak.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("machine-{i:02}");
            loop {
                let rev = c.revision().await.unwrap();
                match c.lock(&id, None).await {
                    Ok(_) => break,
                    Err(CoordError::Semaphore(SemaphoreError::Full(_))) => {
                        c.wait_change(rev, Duration::from_millis(500))
                            .await
                            .unwrap();
                    }
                    Err(e) => panic!("{id}: {e}"),
                }
            }
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let sem = c.get().await.unwrap();
            assert!(sem.holders().len() <= 3, "{sem:?}");
            assert!(sem.is_holder(&id));
            tokio::time::sleep(Duration::from_millis(20)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            c.unlock(&id).await.unwrap();
            id
        }));
    }
    let mut served = BTreeSet::new();
    for t in tasks {
        served.insert(t.await.unwrap());
    }
    assert_eq!(served.len(), 50);
    assert!(peak.load(Ordering::SeqCst) <= 3);
    assert!(peak.load(Ordering::SeqCst) >= 2, "no concurrency at all?");
    let sem = c.get().await.unwrap();
    assert_eq!((sem.semaphore, sem.max, sem.holders()), (3, 3, &[][..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_killed_mid_operation_then_restarted() {
    let mut e = etcd();
    let s = store(&e).await;
    let c = Coordinator::new(s.clone(), "", RetryPolicy::patient(Duration::from_secs(30)));
    c.set_max(10).await.unwrap();
    // Lockers and unlockers run while etcd is killed and restarted under them.
    let mut tasks = vec![];
    for i in 0..10 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("m{i}");
            for _ in 0..5 {
                c.lock(&id, None).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
                c.unlock(&id).await.unwrap();
            }
            c.lock(&id, None).await.unwrap();
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    e.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    e.restart().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let sem = c.get().await.unwrap();
    let want: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(sem.holders(), &want[..]);
    assert_eq!(sem.semaphore, 0);
    // With etcd down and a short policy, the error says so instead of hanging.
    e.kill();
    let short = Coordinator::new(s.clone(), "", RetryPolicy::short());
    let err = short.lock("x", None).await.unwrap_err();
    assert!(err.to_string().contains("etcd unavailable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_with_dead_lease_is_freed_after_ttl() {
    let e = etcd();
    let s = store(&e).await;
    let c = Coordinator::new(s.clone(), "", RetryPolicy::short());
    // A plain (locksmith-style) holder and a lease-backed holder that then dies.
    c.set_max(2).await.unwrap();
    c.lock("plain", None).await.unwrap();
    let lease = s.grant_lease(Duration::from_secs(2)).await.unwrap();
    c.lock("dies", Some(lease)).await.unwrap();
    assert!(s.keep_alive_once(lease).await.unwrap());
    assert_eq!(
        c.lock("next", None).await.unwrap_err().to_string(),
        "semaphore is at 0"
    );
    // The JSON key stays exactly locksmith's.
    assert_eq!(
        raw_get(&s, "coreos.com/updateengine/rebootlock/semaphore")
            .await
            .as_deref(),
        Some(r#"{"semaphore":0,"max":2,"holders":["dies","plain"]}"#)
    );
    // No more keep-alives: after the TTL the holder is removed on the next operation.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    c.lock("next", None).await.unwrap();
    let sem = c.get().await.unwrap();
    assert_eq!(sem.holders(), ["next", "plain"]);
    assert_eq!(sem.semaphore, 0);
    // The marker keys of the dead holder are gone too.
    let rest = s
        .client()
        .get(
            "coreos.com/updateengine/rebootlock/semaphore.leases/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(rest.kvs().len(), 0);

    // A live lease-backed holder is kept, and survives re-lock onto a new lease.
    let l1 = s.grant_lease(Duration::from_secs(2)).await.unwrap();
    c.unlock("next").await.unwrap();
    c.lock("lives", Some(l1)).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(s.keep_alive_once(l1).await.unwrap());
        assert!(c.get().await.unwrap().is_holder("lives"));
    }
    let l2 = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        c.lock("lives", Some(l2)).await.unwrap(),
        LockOutcome::AlreadyHeld
    );
    s.revoke_lease(l1).await.unwrap();
    assert!(c.get().await.unwrap().is_holder("lives"));
    // Unlock removes the side keys; a revoked lease frees at once.
    c.unlock("lives").await.unwrap();
    let l3 = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    c.lock("revoked", Some(l3)).await.unwrap();
    s.revoke_lease(l3).await.unwrap();
    assert!(!c.get().await.unwrap().is_holder("revoked"));
}
