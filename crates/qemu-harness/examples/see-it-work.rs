//! See it work: a real A/B update on real boots, in QEMU.
//!
//! `cargo run -p fastpatch-qemu-harness --example see-it-work`
//!
//! The real fastpatch-server runs in this process on the host; the guest's OS is the real
//! fastpatch engine (a static binary inside each version's USR image), started by the
//! initramfs /init after its gptprio boot chooser.
//!
//! 1. version 1.0.0 on USR-A; 2.0.0 is released (image + signed payload) and published;
//! 2. boot 1: the engine checks in, downloads 2.0.0, writes and verifies it on USR-B, stages
//!    it (tries=1) and reboots;
//! 3. boot 2: the chooser spends B's try, 2.0.0's health gate passes, B is marked good, and the
//!    engine reports 3/2 to the server (the demo switches the machine off once it has).
//!
//! Between boots it prints the slot attributes read from the disk image and what the server
//! recorded.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fastpatch_disk::{Disk, OpenMode, USR_A_INDEX, USR_B_INDEX};
use fastpatch_qemu_harness::{BootOutcome, Lab, Testbed, TEST_ENGINE_LAYER};

fn main() -> Result<()> {
    let started = Instant::now();
    // The example binary lives in <target>/debug/examples/.
    let exe = std::env::current_exe().context("locating the example binary")?;
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .context("locating the cargo target directory")?;
    println!("preparing QEMU, kernel, static /init and engine (first run: several minutes)...");
    let lab = Lab::get(&target.join("tmp")).map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;
    let tb = Testbed::new(lab, dir.path())?;
    println!(
        "fastpatch-server on {} (the guest reaches it as {})",
        tb.server.host_url(),
        tb.server.guest_update_url()
    );

    let v1 = tb.version("1.0.0", true);
    let mut m = tb.machine("see-it-work", &v1, TEST_ENGINE_LAYER)?;
    show_table(&m.disk, "new disk: 1.0.0 on USR-A")?;
    let v2 = tb.version("2.0.0", true);
    tb.release(&v2, m.usr_size()?)?;
    println!("released 2.0.0: USR image + signed payload published to channel stable");

    println!("\n=== boot 1: 1.0.0 checks for updates");
    let spec = m.next_spec().timeout(Duration::from_secs(150));
    let o = m.run(&spec)?.clone();
    show_guest(&o);
    if !o.rebooted() {
        bail!(
            "boot 1 did not end in the engine's reboot: {}",
            o.describe()
        );
    }
    println!(
        "  -> the engine rebooted the machine after {:.1} s",
        o.elapsed.as_secs_f64()
    );
    show_table(&m.disk, "after boot 1")?;
    show_server(&tb)?;

    println!("\n=== boot 2: trial boot of 2.0.0");
    let spec = m.next_spec().timeout(Duration::from_secs(150));
    let o = m
        .run_until(&spec, &mut || tb.status().is_ok_and(|s| s == "complete"))?
        .clone();
    show_guest(&o);
    if !o.stopped {
        bail!(
            "the server never recorded the update as complete: {}",
            o.describe()
        );
    }
    println!(
        "  -> switched off once the server recorded 3/2, after {:.1} s",
        o.elapsed.as_secs_f64()
    );
    show_table(&m.disk, "after boot 2")?;
    show_server(&tb)?;
    println!(
        "\nupdated 1.0.0 -> 2.0.0 on real boots in {:.0} s; serial logs: {}",
        started.elapsed().as_secs_f64(),
        lab.log_dir.display()
    );
    Ok(())
}

/// The guest's own lines worth reading: the init's decisions and the engine's states (its
/// log lines without timestamp, level and module).
fn show_guest(o: &BootOutcome) {
    for line in o.log.lines() {
        let line = line.trim();
        let line = match line.find(" fastpatch_") {
            Some(at) if line.starts_with("20") => line[at..]
                .split_once(": ")
                .map_or(line, |(_, message)| message),
            _ => line,
        };
        let engine = line.contains("UPDATE_STATUS_")
            || line.contains("health gate")
            || line.contains("slot staged")
            || line.contains("downloading the update");
        if line.starts_with("fastpatch-init: chose")
            || line.starts_with("fastpatch-init: mounted USR")
            || line.starts_with("fastpatch-init: handing over")
            || engine
        {
            println!("  guest | {line}");
        }
    }
}

fn show_table(disk: &Path, title: &str) -> Result<()> {
    let d = Disk::open(disk, OpenMode::ReadOnly)?;
    println!("--- {title}");
    for index in [USR_A_INDEX, USR_B_INDEX] {
        let p = d.partition(index)?;
        println!(
            "  {:<5} priority={} tries={} successful={}",
            p.name,
            p.attrs.priority,
            p.attrs.tries,
            u8::from(p.attrs.successful)
        );
    }
    Ok(())
}

fn show_server(tb: &Testbed) -> Result<()> {
    let inst = tb.instance()?.context("the machine never checked in")?;
    println!(
        "--- server: machine {} version={} status={} events={}",
        &inst.machine_id[..8],
        inst.version,
        inst.status,
        tb.events()?.join(",")
    );
    Ok(())
}
