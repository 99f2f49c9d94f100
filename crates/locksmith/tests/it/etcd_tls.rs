//! TLS with only a CA file (Flatcar#948): etcd serves clients over TLS with a certificate from
//! a test CA made by openssl; the client trusts the CA and presents no certificate.

use fastpatch_locksmith::etcd::{EtcdConfig, EtcdStore};
use fastpatch_locksmith::store::{Coordinator, RetryPolicy};
use fastpatch_locksmith::testsupport::EtcdServer;
use fastpatch_testsupport::TestCa;

#[tokio::test]
async fn ca_file_alone_is_enough() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let ca = TestCa::create(p).unwrap_or_else(|e| panic!("{e}"));
    let e = EtcdServer::start_tls(ca.server_pem.clone(), ca.server_key.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut cfg = EtcdConfig::local().with_endpoints(&e.endpoint());
    cfg.ca_file = Some(ca.ca_pem.clone());
    let store = EtcdStore::connect(&cfg)
        .await
        .expect("connect with CA only");
    let c = Coordinator::new(
        store,
        "",
        RetryPolicy::patient(std::time::Duration::from_secs(10)),
    );
    c.lock("tls-machine", None).await.unwrap();
    assert_eq!(c.get().await.unwrap().holders(), ["tls-machine"]);
    // An `http://` endpoint with a CA is upgraded to https.
    let mut cfg2 = EtcdConfig::local().with_endpoints(&e.endpoint().replace("https://", "http://"));
    cfg2.ca_file = Some(ca.ca_pem.clone());
    let c2 = Coordinator::new(
        EtcdStore::connect(&cfg2).await.unwrap(),
        "",
        RetryPolicy::short(),
    );
    assert!(c2.get().await.unwrap().is_holder("tls-machine"));
    // Without the CA the server is not trusted.
    let plain = EtcdConfig::local().with_endpoints(&e.endpoint());
    let bad = match EtcdStore::connect(&plain).await {
        Ok(s) => Coordinator::new(s, "", RetryPolicy::short())
            .get()
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(bad, "connected to a TLS etcd without trusting its CA");
}
