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
    let rt = sim::roundtrips(store.clone(), Duration::from_secs(5)).await?;
    println!(
        "lock+unlock round trips: {rt:.0}/s (one client, sequential, real etcd 3.4 on loopback)"
    );
    // Where the floor comes from: every etcd write waits for an fsync of its WAL, and a lock
    // + unlock pair is two writes. The same loop on an etcd that skips fsync, and this disk's
    // own fdatasync rate, show how much of the time is the disk.
    let (puts, gets) = raw_rates(&store, Duration::from_secs(3)).await?;
    println!(
        "etcd itself, same client: {puts:.0} puts/s, {gets:.0} gets/s, one at a time \
         (a lock or an unlock is one read and one guarded transaction)"
    );
    let syncs = fdatasync_rate(etcd.data_dir(), Duration::from_secs(3))?;
    println!("fdatasync of a 4 KiB write on etcd's data filesystem: {syncs:.0}/s");
    let unsafe_etcd = EtcdServer::start_without_fsync().map_err(anyhow::Error::msg)?;
    let store = EtcdStore::connect(&EtcdConfig::local().with_endpoints(&unsafe_etcd.endpoint()))
        .await
        .context("connecting to the no-fsync etcd")?;
    let no_fsync = sim::roundtrips(store, Duration::from_secs(5)).await?;
    println!(
        "lock+unlock round trips with etcd --unsafe-no-fsync: {no_fsync:.0}/s ({:.2}x the fsyncing etcd)",
        no_fsync / rt
    );
    Ok(())
}

/// Plain sequential puts and gets of one small key per second.
async fn raw_rates(store: &EtcdStore, dur: Duration) -> anyhow::Result<(f64, f64)> {
    let mut client = store.client();
    let started = std::time::Instant::now();
    let mut puts = 0u64;
    while started.elapsed() < dur {
        client.put("bench/raw", puts.to_string(), None).await?;
        puts += 1;
    }
    let put_rate = puts as f64 / started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let mut gets = 0u64;
    while started.elapsed() < dur {
        client.get("bench/raw", None).await?;
        gets += 1;
    }
    Ok((put_rate, gets as f64 / started.elapsed().as_secs_f64()))
}

/// Sequential 4 KiB writes, each followed by `fdatasync`, per second.
fn fdatasync_rate(dir: &std::path::Path, dur: Duration) -> anyhow::Result<f64> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fsync-probe");
    let f = std::fs::File::create(&path).context("creating the fsync probe")?;
    let block = [0x5a_u8; 4096];
    let started = std::time::Instant::now();
    let mut n = 0u64;
    while started.elapsed() < dur {
        f.write_all_at(&block, (n % 256) * 4096)?;
        f.sync_data()?;
        n += 1;
    }
    let _ = std::fs::remove_file(&path);
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
