//! Reboot coordination under faults (issue 18), on a real etcd with the fleet simulation (each
//! machine runs locksmithd's strategy state machine and its lease keeper):
//! - etcd is killed while machines hold slots and stays down for longer than the lease TTL,
//!   then comes back on the same data;
//! - one machine dies right after taking its slot (no reboot, no unlock, no keep-alive).
//!
//! Goals: never more than `max` machines rebooting or holding a slot, every live machine
//! finishes, and the dead machine's slot is freed by its lease (no slot held forever).

use std::time::{Duration, Instant};

use fastpatch_locksmith::etcd::{EtcdConfig, EtcdStore};
use fastpatch_locksmith::sim::{self, Faults};
use fastpatch_locksmith::store::{Coordinator, RetryPolicy};
use fastpatch_locksmith::testsupport::EtcdServer;

const MACHINES: usize = 12;
const MAX: i64 = 2;
const TTL: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_longer_than_the_lease_ttl_and_a_machine_dead_holding_its_slot() {
    let mut e = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let cfg = EtcdConfig::local().with_endpoints(&e.endpoint());
    let store = EtcdStore::connect(&cfg).await.unwrap();
    let watcher = Coordinator::new(
        store.clone(),
        "",
        RetryPolicy::patient(Duration::from_secs(60)),
    );
    let faults = Faults {
        lease_ttl: Some(TTL),
        die_holding: 1,
    };
    let rollout = tokio::spawn(sim::rollout_with(
        store.clone(),
        MACHINES,
        MAX,
        Duration::from_millis(400),
        faults,
    ));

    // The outage starts once the semaphore is full: one slot held by the dead machine, one by
    // a machine on its way through a reboot.
    let started = Instant::now();
    loop {
        let sem = watcher.get().await.unwrap();
        if sem.holders().len() == MAX as usize {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the rollout never filled the semaphore: {sem:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e.kill();
    tokio::time::sleep(TTL + Duration::from_secs(2)).await;
    e.restart().unwrap();

    let r = tokio::time::timeout(Duration::from_secs(120), rollout)
        .await
        .expect("the rollout finishes after etcd is back")
        .unwrap()
        .unwrap();
    eprintln!("{r:?}");
    assert_eq!((r.done, r.died), (MACHINES - 1, 1), "{r:?}");
    assert!(r.peak_rebooting <= MAX as usize, "{r:?}");
    assert!(r.peak_holders <= MAX as usize, "{r:?}");
    assert!(r.peak_rebooting >= 1, "{r:?}");

    // No slot held forever: the dead machine's hold goes once its lease expires.
    let freed = Instant::now();
    loop {
        let sem = watcher.get().await.unwrap();
        if sem.holders().is_empty() {
            assert_eq!((sem.semaphore, sem.max), (MAX, MAX), "{sem:?}");
            break;
        }
        assert_eq!(
            sem.holders(),
            ["sim-0000"],
            "only the dead machine may still hold"
        );
        assert!(
            freed.elapsed() < TTL * 3,
            "the dead machine's slot was not freed within 3 TTLs: {sem:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
