//! FleetLock server and client on a real etcd, over real HTTP on 127.0.0.1.

use std::time::Duration;

use fastpatch_locksmith::etcd::{EtcdConfig, EtcdStore};
use fastpatch_locksmith::fleetlock::{self, ClientError, ErrorBody, GroupConfig};
use fastpatch_locksmith::store::{Coordinator, RetryPolicy};
use fastpatch_locksmith::testsupport::EtcdServer;

struct Setup {
    _etcd: EtcdServer,
    _dir: tempfile::TempDir,
    groups: std::path::PathBuf,
    base: String,
    store: EtcdStore,
}

async fn setup(groups: &str) -> Setup {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let store = EtcdStore::connect(&EtcdConfig::local().with_endpoints(&etcd.endpoint()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("groups.conf");
    std::fs::write(&path, groups).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = fleetlock::Server::new(store.clone(), GroupConfig::new(path.clone()));
    tokio::spawn(fleetlock::serve(listener, server));
    Setup {
        _etcd: etcd,
        _dir: dir,
        groups: path,
        base,
        store,
    }
}

async fn post(base: &str, path: &str, header: bool, body: &str) -> (u16, String) {
    fastpatch_locksmith::fleetlock::install_tls_provider();
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if header {
        req = req.header("fleet-lock-protocol", "true");
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn body(id: &str, group: &str) -> String {
    format!(r#"{{"client_params":{{"id":"{id}","group":"{group}"}}}}"#)
}

fn kind(text: &str) -> String {
    serde_json::from_str::<ErrorBody>(text).unwrap().kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_cases() {
    let s = setup("default=2\nworkers=1\n").await;
    let b = &s.base;
    // airlock's kinds: missing header, bad JSON, no client_params, incomplete client_params
    // and an empty id are invalid identities; an invalid or unconfigured group is unknown.
    let (st, t) = post(b, "/v1/pre-reboot", false, &body("a", "default")).await;
    assert_eq!((st, kind(&t).as_str()), (400, "invalid_client_identity"));
    let (st, t) = post(b, "/v1/pre-reboot", true, "{not json").await;
    assert_eq!((st, kind(&t).as_str()), (400, "invalid_client_identity"));
    let (st, t) = post(b, "/v1/pre-reboot", true, r#"{"other":1}"#).await;
    assert_eq!((st, kind(&t).as_str()), (400, "invalid_client_identity"));
    let (st, t) = post(b, "/v1/pre-reboot", true, r#"{"client_params":{"id":"a"}}"#).await;
    assert_eq!((st, kind(&t).as_str()), (400, "invalid_client_identity"));
    let (st, t) = post(b, "/v1/pre-reboot", true, &body("a", "bad/group")).await;
    assert_eq!((st, kind(&t).as_str()), (400, "unknown_group"));
    let (st, t) = post(b, "/v1/pre-reboot", true, &body("", "default")).await;
    assert_eq!((st, kind(&t).as_str()), (400, "invalid_client_identity"));
    let (st, t) = post(b, "/v1/pre-reboot", true, &body("a", "nope")).await;
    assert_eq!((st, kind(&t).as_str()), (400, "unknown_group"));

    // Take both slots, re-lock, then full.
    assert_eq!(
        post(b, "/v1/pre-reboot", true, &body("a", "default"))
            .await
            .0,
        200
    );
    assert_eq!(
        post(b, "/v1/pre-reboot", true, &body("b", "default"))
            .await
            .0,
        200
    );
    assert_eq!(
        post(b, "/v1/pre-reboot", true, &body("a", "default"))
            .await
            .0,
        200
    );
    let (st, t) = post(b, "/v1/pre-reboot", true, &body("c", "default")).await;
    assert_eq!(st, 500);
    let e: ErrorBody = serde_json::from_str(&t).unwrap();
    assert_eq!(e.kind, "failed_lock");
    assert_eq!(e.value, "all 2 semaphore slots currently locked");
    // Same etcd semaphore as locksmith's default group.
    let c = Coordinator::new(s.store.clone(), "", RetryPolicy::short());
    assert_eq!(c.get().await.unwrap().holders(), ["a", "b"]);
    // Groups are separate; unlock of a non-holder is fine (idempotent).
    assert_eq!(
        post(b, "/v1/pre-reboot", true, &body("c", "workers"))
            .await
            .0,
        200
    );
    assert_eq!(
        post(b, "/v1/steady-state", true, &body("zzz", "default"))
            .await
            .0,
        200
    );
    assert_eq!(
        post(b, "/v1/steady-state", true, &body("a", "default"))
            .await
            .0,
        200
    );
    assert_eq!(
        post(b, "/v1/steady-state", true, &body("a", "default"))
            .await
            .0,
        200
    );
    assert_eq!(
        post(b, "/v1/pre-reboot", true, &body("c", "default"))
            .await
            .0,
        200
    );
    let (st, t) = post(b, "/v1/steady-state", false, &body("c", "default")).await;
    assert_eq!((st, kind(&t).as_str()), (400, "invalid_client_identity"));
    let wc = Coordinator::new(s.store.clone(), "workers", RetryPolicy::short());
    assert_eq!(wc.get().await.unwrap().holders(), ["c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_slot_count_takes_effect_and_client_works() {
    let s = setup("default=1\n").await;
    let a = fleetlock::Client::new(&s.base, "", "machine-a", None).unwrap();
    let bcl = fleetlock::Client::new(&s.base, "default", "machine-b", None).unwrap();
    a.pre_reboot().await.unwrap();
    match bcl.pre_reboot().await {
        Err(ClientError::Refused {
            status: 500, kind, ..
        }) => assert_eq!(kind, "failed_lock"),
        other => panic!("{other:?}"),
    }
    // Raise the slot count in the file: the next request sees it (airlock#81).
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&s.groups, "default=2\nnew-group=1\n").unwrap();
    bcl.pre_reboot().await.unwrap();
    let c = Coordinator::new(s.store.clone(), "", RetryPolicy::short());
    let sem = c.get().await.unwrap();
    assert_eq!((sem.max, sem.semaphore), (2, 0));
    fleetlock::Client::new(&s.base, "new-group", "x", None)
        .unwrap()
        .pre_reboot()
        .await
        .unwrap();
    // Lowering below the holders keeps them; no new slot until they leave.
    std::fs::write(&s.groups, "default=1\n").unwrap();
    let ccl = fleetlock::Client::new(&s.base, "default", "machine-c", None).unwrap();
    assert!(ccl.pre_reboot().await.is_err());
    a.steady_state().await.unwrap();
    assert!(
        ccl.pre_reboot().await.is_err(),
        "max must now be 1, held by b"
    );
    bcl.steady_state().await.unwrap();
    ccl.pre_reboot().await.unwrap();
    let sem = c.get().await.unwrap();
    assert_eq!(
        (sem.max, sem.semaphore, sem.holders()),
        (1, 0, &["machine-c".to_string()][..])
    );
    // A server that is not there: a clear client error.
    let port = fastpatch_locksmith::testsupport::free_port().unwrap();
    let dead = fleetlock::Client::new(&format!("http://127.0.0.1:{port}"), "", "m", None).unwrap();
    assert!(matches!(dead.pre_reboot().await, Err(ClientError::Http(_))));
}
