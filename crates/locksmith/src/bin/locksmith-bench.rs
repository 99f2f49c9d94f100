//! Reboot-coordination benchmark (run by scripts/bench-locksmith): a simulated rollout of N
//! machines with max k against a real etcd it starts, compared with the ideal
//! ceil(N/k) × reboot time, and lock+unlock round trips per second.

use std::time::Duration;

use anyhow::Context;
use fastpatch_locksmith::etcd::{EtcdConfig, EtcdStore};
use fastpatch_locksmith::sim;
use fastpatch_locksmith::testsupport::EtcdServer;

fn arg(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let machines = arg("MACHINES", 200) as usize;
    let max = arg("MAX", 5) as i64;
    let reboot_ms = arg("REBOOT_MS", 1000);
    let etcd = EtcdServer::start().map_err(anyhow::Error::msg)?;
    let store = EtcdStore::connect(&EtcdConfig::local().with_endpoints(&etcd.endpoint()))
        .await
        .context("connecting to etcd")?;
    let r = sim::rollout(
        store.clone(),
        machines,
        max,
        Duration::from_millis(reboot_ms),
    )
    .await?;
    println!(
        "rollout: {} machines, max {}, reboot {} ms: wall {:.2} s, ideal {:.2} s, ratio {:.3}, peak rebooting {}, done {}",
        r.machines,
        r.max,
        reboot_ms,
        r.wall.as_secs_f64(),
        r.ideal.as_secs_f64(),
        r.ratio(),
        r.peak_rebooting,
        r.done
    );
    let rt = sim::roundtrips(store, Duration::from_secs(5)).await?;
    println!(
        "lock+unlock round trips: {rt:.0}/s (one client, sequential, real etcd 3.4 on loopback)"
    );
    Ok(())
}
