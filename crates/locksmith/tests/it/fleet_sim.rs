//! 200 simulated machines, max 5, on a real etcd.

use std::time::Duration;

use fastpatch_locksmith::etcd::{EtcdConfig, EtcdStore};
use fastpatch_locksmith::sim;
use fastpatch_locksmith::testsupport::EtcdServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_machines_max_five() {
    let e = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let store = EtcdStore::connect(&EtcdConfig::local().with_endpoints(&e.endpoint()))
        .await
        .unwrap();
    let r = sim::rollout(store.clone(), 200, 5, Duration::from_millis(100))
        .await
        .unwrap();
    eprintln!("{r:?} ratio {:.2}", r.ratio());
    assert_eq!(r.done, 200);
    assert!(r.peak_rebooting <= 5, "{r:?}");
    assert!(r.peak_holders <= 5, "{r:?}");
    assert!(r.peak_rebooting >= 2, "no parallelism at all: {r:?}");
    let c = fastpatch_locksmith::store::Coordinator::new(
        store,
        "",
        fastpatch_locksmith::store::RetryPolicy::short(),
    );
    let sem = c.get().await.unwrap();
    assert_eq!((sem.semaphore, sem.max, sem.holders().len()), (5, 5, 0));
}
