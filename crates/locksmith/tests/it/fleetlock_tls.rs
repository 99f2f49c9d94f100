//! The FleetLock client over HTTPS: a real FleetLock server on a real etcd, behind real nginx
//! terminating TLS with a certificate from a private CA (how FleetLock is often exposed).

use fastpatch_locksmith::etcd::{EtcdConfig, EtcdStore};
use fastpatch_locksmith::fleetlock::{self, ClientError, GroupConfig};
use fastpatch_locksmith::store::{Coordinator, RetryPolicy};
use fastpatch_locksmith::testsupport::tls::NginxTlsProxy;
use fastpatch_locksmith::testsupport::EtcdServer;
use fastpatch_testsupport::TestCa;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetlock_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let store = EtcdStore::connect(&EtcdConfig::local().with_endpoints(&etcd.endpoint()))
        .await
        .unwrap();
    let groups = dir.path().join("groups.conf");
    std::fs::write(&groups, "default=1\n").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(fleetlock::serve(
        listener,
        fleetlock::Server::new(store.clone(), GroupConfig::new(groups)),
    ));
    let nginx = NginxTlsProxy::start(&ca.server_pem, &ca.server_key, &backend)
        .unwrap_or_else(|e| panic!("{e}"));
    let base = nginx.url();

    // Trusting the CA: the lock is taken in etcd and released again.
    let client = fleetlock::Client::new(&base, "", "tls-machine", Some(&ca.ca_pem)).unwrap();
    client.pre_reboot().await.expect("pre-reboot over https");
    let coord = Coordinator::new(store, "", RetryPolicy::short());
    assert_eq!(coord.get().await.unwrap().holders(), ["tls-machine"]);
    client
        .steady_state()
        .await
        .expect("steady-state over https");
    assert!(coord.get().await.unwrap().holders().is_empty());

    // Not trusting it: refused, and the error says why.
    let untrusting = fleetlock::Client::new(&base, "", "other", None).unwrap();
    match untrusting.pre_reboot().await {
        Err(ClientError::Http(msg)) => assert!(
            msg.to_lowercase().contains("certificate"),
            "the error should name the certificate problem: {msg}"
        ),
        other => panic!("an untrusted server was accepted: {other:?}"),
    }
    assert!(coord.get().await.unwrap().holders().is_empty());

    // A missing or non-PEM CA file is a setup error naming the file, not a silent fallback.
    let missing = dir.path().join("nope.pem");
    let err = fleetlock::Client::new(&base, "", "m", Some(&missing)).unwrap_err();
    assert!(matches!(err, ClientError::Setup { .. }) && err.to_string().contains("nope.pem"));
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let err = fleetlock::Client::new(&base, "", "m", Some(&garbage)).unwrap_err();
    assert!(err.to_string().contains("garbage.pem"), "{err}");

    // Stopping the proxy stops its worker too (a SIGKILL to the master alone left the
    // worker running after every test run).
    let workers = nginx.worker_pids();
    assert!(!workers.is_empty(), "nginx has no worker process");
    drop(nginx);
    for w in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{w}")).exists(),
            "nginx worker {w} outlived its master"
        );
    }
}
