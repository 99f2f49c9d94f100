//! A fleet rolling update on real boots (issue 16): fastpatch-server and one etcd on the host,
//! three QEMU guests made from one Debian release image (each gets its own machine-id on its
//! first boot), the shipped units, D-Bus, `REBOOT_STRATEGY=etcd-lock`, a semaphore of 1 and
//! holds tied to an etcd lease.
//!
//! 1. 2.0.0 rolls out: all three install and stage it, then reboot one at a time through the
//!    reboot slot. The first machine to take the slot is SIGKILLed (QEMU) while it holds it:
//!    its lease expires and the others proceed; powered on again at the end, it boots the
//!    staged slot and finishes.
//! 2. 3.0.0 is bad (a unit its health gate requires fails). Safe mode grants it to one
//!    machine; that machine fails the gate, falls back by itself and reports errorcode 44; the
//!    group halts; the other two look again after the halt and never take 3.0.0.
//!
//! A watcher records the semaphore (etcd watch) and the server's records on one timeline,
//! written to `target/qemu-logs/fleet-timeline.txt`; the checks at the end run on it.

mod guests;

use std::sync::atomic::Ordering::SeqCst;

use crate::real_os_support::*;
use guests::*;

/// The lease a hold is tied to. locksmithd refreshes it right before rebooting, so it must be
/// longer than a reboot up to locksmithd's start in the new boot (40–90 s here, under load).
const LEASE_TTL_SECS: u64 = 150;

/// An engine layer over [`TEST_ENGINE_LAYER`]: checks every 10 s, so the bad release is seen
/// soon.
const FLEET_ENGINE_LAYER: &str = "[schedule]\ninterval = 10\ninterval_fuzz = 0\n";

const GUESTS: usize = 3;

#[test]
fn a_fleet_rolls_out_one_reboot_at_a_time_survives_a_dead_holder_and_stops_a_bad_release() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let etcd = etcd();
    let update_conf = format!("LOCKSMITHD_LEASE_TTL={LEASE_TTL_SECS}s\n");
    let layer = FsFile::new(
        "etc/fastpatch/engine.d/60-fleet.toml",
        FLEET_ENGINE_LAYER,
        0o644,
    );
    let member = Member {
        update_conf: &update_conf,
        fixed_machine_id: false,
        extra: std::slice::from_ref(&layer),
        ..Member::default()
    };
    let (tb, tree, pem) = fleet_member_with(dir.path(), &etcd, &member);
    build(&tree, "1.0.0", &pem, dir.path());
    build(&tree, "2.0.0", &pem, dir.path());
    make_bad(&tree);
    build(&tree, "3.0.0", &pem, dir.path());
    let disks: Vec<PathBuf> = (1..=GUESTS)
        .map(|i| {
            let disk = dir.path().join(format!("m{i}.img"));
            let st = Command::new("cp")
                .arg("--sparse=always")
                .arg(dir.path().join("1.0.0/disk.img"))
                .arg(&disk)
                .status()
                .unwrap();
            assert!(st.success());
            disk
        })
        .collect();
    // The machines' disks are copies: only the payloads are needed from here on (the three
    // builds and disks would otherwise take about 13 GB).
    std::fs::remove_dir_all(dir.path().join("1.0.0")).unwrap();
    for version in ["2.0.0", "3.0.0"] {
        keep_payload_only(&dir.path().join(version));
    }

    // 2.0.0 for everyone at once: safe mode off.
    let mut group = tb.server.group(GROUP).unwrap().unwrap();
    group.safe_mode = false;
    tb.server.set_group(&group).unwrap();
    tb.server
        .publish("2.0.0", &dir.path().join("2.0.0/update.payload"), GROUP)
        .unwrap();

    let fleet = Fleet::new();
    fleet.kill_armed.store(true, SeqCst);
    let (outcomes, scenario) = std::thread::scope(|s| {
        s.spawn(|| watch(&fleet, &etcd.endpoint(), &tb));
        let guests: Vec<_> = disks
            .iter()
            .enumerate()
            .map(|(i, disk)| {
                let (fleet, key) = (&fleet, &tb.key);
                s.spawn(move || run_guest(fleet, i + 1, disk, key))
            })
            .collect();
        let scenario = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scenario(&fleet, &tb, &etcd, dir.path())
        }));
        fleet.stop.store(true, SeqCst);
        let outcomes: Vec<Vec<BootOutcome>> =
            guests.into_iter().map(|g| g.join().unwrap()).collect();
        (outcomes, scenario)
    });
    let record = lab().log_dir.join("fleet-timeline.txt");
    std::fs::write(&record, fleet.describe()).unwrap();
    eprintln!("timeline: {}", record.display());
    let times = match scenario {
        Ok(t) => t,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    check(&fleet, &tb, &outcomes, &disks, &times);
}

/// Removes a release's build output except its signed payload.
fn keep_payload_only(release: &Path) {
    for entry in std::fs::read_dir(release).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name() != Some(std::ffi::OsStr::new("update.payload")) {
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }
}

/// When each phase ended, from the fleet's start.
struct Times {
    published_2: Duration,
    rolled_out: Duration,
    bad_done: Duration,
    killed: usize,
    bad: String,
}

fn complete_on(tb: &Testbed, version: &str) -> usize {
    tb.server
        .instances(GROUP)
        .unwrap()
        .iter()
        .filter(|i| {
            i.version == version && i.status == fastpatch_server::policy::InstanceStatus::Complete
        })
        .count()
}

fn scenario(fleet: &Fleet, tb: &Testbed, etcd: &EtcdServer, dir: &Path) -> Times {
    let published_2 = fleet.now();
    let minute = Duration::from_secs(60);
    fleet.wait_for(
        "a machine killed holding the reboot slot",
        20 * minute,
        &mut || fleet.killed.lock().unwrap().is_some(),
    );
    let killed = fleet.killed.lock().unwrap().unwrap();
    let victim = lock_holders(etcd);
    assert_eq!(victim.len(), 1, "the killed machine holds the slot");
    fleet.wait_for(
        "the dead holder's lease expired, another machine holds the slot",
        5 * minute,
        &mut || {
            let h = lock_holders(etcd);
            !h.is_empty() && h != victim
        },
    );
    fleet.wait_for(
        "one machine on 2.0.0, the next one rebooting",
        10 * minute,
        &mut || complete_on(tb, "2.0.0") == 1 && !lock_holders(etcd).is_empty(),
    );
    fleet.wait_for(
        "the two live machines on 2.0.0, the slot free",
        15 * minute,
        &mut || complete_on(tb, "2.0.0") == GUESTS - 1 && lock_holders(etcd).is_empty(),
    );
    // Taken while no machine reboots (the killed one waits to be powered on), so Chromium's
    // start on the host does not slow a measured reboot.
    screenshot_group_page(tb);
    fleet.resume.store(true, SeqCst);
    fleet.wait_for("the killed machine on 2.0.0 too", 10 * minute, &mut || {
        complete_on(tb, "2.0.0") == GUESTS && lock_holders(etcd).is_empty()
    });
    let rolled_out = fleet.now();

    // 3.0.0, bad, with safe mode on: one machine gets it.
    let mut group = tb.server.group(GROUP).unwrap().unwrap();
    group.safe_mode = true;
    tb.server.set_group(&group).unwrap();
    tb.server
        .publish("3.0.0", &dir.join("3.0.0/update.payload"), GROUP)
        .unwrap();
    let mut bad = String::new();
    fleet.wait_for(
        "3.0.0 failed on one machine, the group halted, the slot free",
        15 * minute,
        &mut || {
            let failed: Vec<_> = tb
                .server
                .instances(GROUP)
                .unwrap()
                .into_iter()
                .filter(|i| i.last_error_code == Some(44))
                .collect();
            if let [one] = failed.as_slice() {
                bad = one.machine_id.clone();
            }
            !bad.is_empty()
                && tb.server.group(GROUP).unwrap().is_some_and(|g| g.halted)
                && lock_holders(etcd).is_empty()
        },
    );
    let halted_at = tb.server.group(GROUP).unwrap().unwrap().halted_at.unwrap();
    fleet.wait_for(
        "the other machines checked in after the halt",
        5 * minute,
        &mut || {
            tb.server
                .instances(GROUP)
                .unwrap()
                .iter()
                .filter(|i| i.machine_id != bad)
                .all(|i| i.last_check_at > halted_at)
        },
    );
    Times {
        published_2,
        rolled_out,
        bad_done: fleet.now(),
        killed,
        bad,
    }
}

/// The dashboard's group page with the real machines mid-rollout, saved as
/// docs/screenshots/fleet-rollout.png (the README shows it).
fn screenshot_group_page(tb: &Testbed) {
    use fantoccini::Locator;
    use fastpatch_testsupport::browser::{browser, login, shot, start_driver};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let driver = start_driver();
    let profile = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let c = browser(&driver, profile.path()).await;
        login(&c, &tb.server.host_url(), ADMIN_TOKEN).await;
        c.goto(&tb.server.group_page_url(GROUP)).await.unwrap();
        c.wait()
            .for_element(Locator::Css("#group-name"))
            .await
            .unwrap();
        let text = |css: &'static str| {
            let c = &c;
            async move {
                c.find(Locator::Css(css))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            }
        };
        assert_eq!(text("#total").await, GUESTS.to_string());
        assert_eq!(
            text("#count-complete td.num").await,
            (GUESTS - 1).to_string()
        );
        shot(&c, "fleet-rollout").await;
        let _ = c.close().await;
    });
}

/// The checks on the whole run: identities, each machine's boots, the server's records, the
/// disks, and the timeline's holds.
fn check(fleet: &Fleet, tb: &Testbed, outcomes: &[Vec<BootOutcome>], disks: &[PathBuf], t: &Times) {
    let timeline = fleet.timeline();
    let ids: Vec<String> = outcomes.iter().map(|o| machine_id(o)).collect();
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        GUESTS,
        "each machine has its own machine-id: {ids:?}"
    );
    let guest_of = |id: &str| ids.iter().position(|i| i == id).map(|i| i + 1);
    let bad_guest = guest_of(&t.bad).expect("the failed machine is one of the guests");

    // Holds: never two at once; each by a machine that rebooted (or was killed) while holding
    // it; each live hold released only after the machine's new boot was healthy (the server
    // recorded it complete, or its failure report after falling back).
    for (at, seen) in &timeline {
        if let Seen::Holders(h) = seen {
            assert!(
                h.len() <= 1,
                "two holders at {at:?}: {h:?}\n{}",
                fleet.describe()
            );
        }
    }
    let holds = holds(&timeline);
    for hold in &holds {
        check_hold(fleet, &timeline, hold, guest_of(&hold.id), t);
    }
    assert!(
        holds.len() >= GUESTS,
        "every machine took the slot: {holds:?}"
    );

    // Every machine ends on 2.0.0 (B good); the bad one tried 3.0.0 on A and fell back.
    for (i, disk) in disks.iter().enumerate() {
        let (a, b) = (attrs(disk, USR_A_INDEX), attrs(disk, USR_B_INDEX));
        assert!(
            b.successful && b.priority > 0,
            "guest {}: B is the good slot: {a:?} {b:?}",
            i + 1
        );
        let inst = tb.instance_of(&ids[i]);
        assert_eq!(inst.version, "2.0.0", "guest {}", i + 1);
        let tried_3 = outcomes[i]
            .iter()
            .any(|o| o.result("systemd").and_then(|r| r.get("version")) == Some("3.0.0"));
        if i + 1 == bad_guest {
            assert!(tried_3, "the failed machine booted 3.0.0");
            assert_eq!(
                (a.tries, a.successful),
                (0, false),
                "3.0.0 spent, never good: {a:?}"
            );
            let events = tb.events_of(&ids[i]);
            assert_eq!(
                &events[events.len() - 4..],
                ["13/1", "14/1", "3/1", "3/0:44"]
            );
            // 3.0.0's own kernel and systemd came up, the required unit failed, the gate gave
            // up without boot-complete.target, and the engine rebooted at once; the next boot
            // fell back to 2.0.0 on B by itself.
            let at = outcomes[i]
                .iter()
                .position(|o| o.result("systemd").and_then(|r| r.get("version")) == Some("3.0.0"))
                .unwrap();
            let o = &outcomes[i][at];
            assert!(o.rebooted(), "{}", o.describe());
            assert_eq!(chosen_slot(&outcomes[i], at), "A", "{}", o.describe());
            assert!(o.result("gate").is_none(), "{}", o.describe());
            assert!(
                o.log.contains("fastpatch-health-check.service failed"),
                "{}",
                o.describe()
            );
            let next = &outcomes[i][at + 1];
            assert_eq!(result(next, "chooser", "slot"), "B", "{}", next.describe());
            assert_eq!(result(next, "systemd", "version"), "2.0.0");
        } else {
            assert!(
                b.priority > a.priority,
                "guest {}: B boots: {a:?} {b:?}",
                i + 1
            );
            assert!(!tried_3, "guest {} never boots 3.0.0", i + 1);
            let log: String = outcomes[i].iter().map(|o| o.log.as_str()).collect();
            assert!(
                !log.contains("downloading the update version=3.0.0"),
                "guest {} never downloads 3.0.0",
                i + 1
            );
        }
    }

    // The first rolling boot of a live machine, as the single-machine scenario checks it:
    // B's own kernel, still holding the slot before the gate, then healthy and marked good.
    let g = (1..=GUESTS)
        .find(|g| *g != t.killed && *g != KEXEC_GUEST)
        .unwrap();
    let first = &outcomes[g - 1][0];
    assert_eq!(result(first, "cmdline", "release"), "1.0.0");
    assert_eq!(result(first, "locksmithctl", "available"), "1");
    let o = &outcomes[g - 1][1];
    assert_eq!(result(o, "locksmithctl", "available"), "0");
    assert_eq!(result(o, "chooser", "slot"), "B", "{}", o.describe());
    assert_eq!(result(o, "kexec", "slot"), "B");
    assert_eq!(result(o, "slot-stage", "version"), "2.0.0");
    assert_eq!(result(o, "cmdline", "release"), "2.0.0");
    assert_eq!(result(o, "locksmithctl", "holders"), ids[g - 1]);
    assert_eq!(
        result(o, "gate", "boot-complete"),
        "active",
        "{}",
        o.describe()
    );
    assert!(
        o.log
            .contains("health checks passed on the first boot of slot USR-B"),
        "{}",
        o.describe()
    );

    check_kexec_boot(&outcomes[KEXEC_GUEST - 1]);
    report_times(&timeline, &holds, t, &ids);
}

/// The slot the boot `outcomes[at]` runs: the chooser's choice, or for a kexec'd boot the
/// slot `fastpatch boot kexec` loaded at the end of the boot before.
fn chosen_slot(outcomes: &[BootOutcome], at: usize) -> &str {
    match outcomes[at].result("chooser") {
        Some(r) => r.get("slot").unwrap_or_default(),
        None => result(&outcomes[at - 1], "kexec-load", "slot"),
    }
}

/// The kexec guest's rolling step: locksmithd loaded 2.0.0's kernel from B with its try spent
/// (1 to 0, as the chooser spends it), and the boot that followed in the same QEMU run had no
/// chooser and no firmware: B's own kernel and initramfs, the 2.0.0 command line (1.0.0's
/// words replaced), healthy and marked good.
fn check_kexec_boot(outcomes: &[BootOutcome]) {
    let all: Vec<String> = outcomes.iter().map(|o| o.describe()).collect();
    let at = outcomes
        .iter()
        .position(|o| o.result("kexec-load").and_then(|r| r.get("version")) == Some("2.0.0"))
        .unwrap_or_else(|| panic!("the kexec guest never loaded 2.0.0\n{all:?}"));
    let load = &outcomes[at];
    assert!(
        load.log.contains("rebooting method=kexec"),
        "{}",
        load.describe()
    );
    assert_eq!(result(load, "kexec-load", "slot"), "B");
    assert_eq!(result(load, "kexec-load", "tries_before"), "1");
    assert_eq!(result(load, "kexec-load", "tries_after"), "0");
    let o = outcomes
        .get(at + 1)
        .unwrap_or_else(|| panic!("no boot after the kexec load\n{}", load.describe()));
    assert!(o.result("chooser").is_none(), "{}", o.describe());
    assert_eq!(
        result(o, "slot-stage", "version"),
        "2.0.0",
        "{}",
        o.describe()
    );
    assert_eq!(result(o, "cmdline", "release"), "2.0.0");
    assert_eq!(result(o, "gate", "boot-complete"), "active");
    assert!(
        o.log
            .contains("health checks passed on the first boot of slot USR-B"),
        "{}",
        o.describe()
    );
}

/// One hold of the reboot slot by guest `g`: the guest rebooted (or was killed) while holding
/// it; a killed guest's hold ends by its lease, not before the TTL; any other hold ends only
/// after the guest's new boot (after its reboot) was healthy.
fn check_hold(
    fleet: &Fleet,
    timeline: &[(Duration, Seen)],
    hold: &Hold,
    g: Option<usize>,
    t: &Times,
) {
    let g = g.unwrap_or_else(|| panic!("{} is not a guest", hold.id));
    let released = hold
        .released
        .unwrap_or_else(|| panic!("a hold never released: {hold:?}\n{}", fleet.describe()));
    let within = |at: Duration| at >= hold.taken && at <= released;
    let first = |want: &dyn Fn(&Seen) -> bool| {
        timeline
            .iter()
            .find(|(at, s)| within(*at) && want(s))
            .map(|(at, _)| *at)
    };
    let rebooted = first(&|s| *s == Seen::Rebooted { guest: g });
    let killed = first(&|s| *s == Seen::Killed { guest: g });
    match (rebooted, killed) {
        (None, Some(killed_at)) => {
            assert_eq!(g, t.killed);
            // locksmithd refreshes its lease every TTL/3, so the lease has between 2/3 TTL and
            // the whole TTL left when the machine dies; the watcher reaps it within a second.
            let ttl = Duration::from_secs(LEASE_TTL_SECS);
            let (earliest, latest) = (killed_at + ttl * 2 / 3, killed_at + ttl);
            assert!(
                released + Duration::from_secs(2) >= earliest
                    && released <= latest + Duration::from_secs(10),
                "the dead holder's slot freed at {released:?}, killed at {killed_at:?}, lease TTL {ttl:?}"
            );
        }
        (Some(rebooted_at), None) => {
            // The guest's log is read every 200 ms, so its healthy line is seen up to that
            // much after it was printed; locksmithd looks every 5 s.
            let healthy = timeline.iter().any(|(at, s)| {
                *s == Seen::Healthy { guest: g }
                    && *at > rebooted_at
                    && *at <= released + Duration::from_millis(500)
            });
            assert!(
                healthy,
                "guest {g} released the slot before its new boot was healthy: {hold:?}\n{}",
                fleet.describe()
            );
        }
        _ => panic!(
            "guest {g} held the slot without one reboot or kill in it: {hold:?}\n{}",
            fleet.describe()
        ),
    }
}

/// Prints the fleet's times: the rollout's wall time, each rolling step (a hold of the slot),
/// each reboot-to-healthy time, and the ideal (install + steps x reboot-to-healthy).
fn report_times(timeline: &[(Duration, Seen)], holds: &[Hold], t: &Times, ids: &[String]) {
    let first_take = holds.first().map(|h| h.taken).unwrap_or_default();
    let install = first_take - t.published_2;
    let (mut to_healthy, mut lease_wait) = (Vec::new(), Duration::ZERO);
    let mut by_method: std::collections::BTreeMap<String, Vec<Duration>> = Default::default();
    for hold in holds.iter().filter(|h| h.taken < t.rolled_out) {
        let g = ids.iter().position(|i| *i == hold.id).unwrap() + 1;
        let released = hold.released.unwrap_or(t.rolled_out);
        let within = |at: Duration| at >= hold.taken && at <= released;
        let killed = timeline
            .iter()
            .any(|(at, s)| within(*at) && *s == Seen::Killed { guest: g });
        let started = timeline.iter().find_map(|(at, s)| match s {
            Seen::RebootStarted { guest, method } if *guest == g && within(*at) => {
                Some((*at, method.clone()))
            }
            _ => None,
        });
        let (Some((rebooted, method)), false) = (started, killed) else {
            lease_wait += released - hold.taken;
            eprintln!(
                "step: guest {g} was killed holding the slot; its lease freed it after {:.1} s",
                (released - hold.taken).as_secs_f64()
            );
            continue;
        };
        let healthy = timeline
            .iter()
            .find(|(at, s)| *at > rebooted && *s == Seen::Healthy { guest: g })
            .map_or(Duration::ZERO, |(at, _)| *at - rebooted);
        to_healthy.push(healthy);
        by_method.entry(method.clone()).or_default().push(healthy);
        eprintln!(
            "step: guest {g} held the slot {:.1} s ({method} reboot to boot-complete {:.1} s)",
            (released - hold.taken).as_secs_f64(),
            healthy.as_secs_f64()
        );
    }
    let mean = |m: &str| {
        let v = by_method.get(m).cloned().unwrap_or_default();
        v.iter().sum::<Duration>().as_secs_f64() / v.len().max(1) as f64
    };
    eprintln!(
        "KEXEC-TIMES kexec reboot-to-healthy={:.0}s firmware reboot-to-healthy={:.0}s saved={:.0}s per reboot",
        mean("kexec"),
        mean("firmware"),
        mean("firmware") - mean("kexec"),
    );
    let wall = t.rolled_out - t.published_2;
    let step = to_healthy.iter().sum::<Duration>() / to_healthy.len().max(1) as u32;
    let ideal = install + step * GUESTS as u32;
    eprintln!(
        "FLEET-TIMES wall={:.0}s install={:.0}s reboot-to-healthy={:.0}s steps={} ideal={:.0}s ratio={:.2} lease-wait={:.0}s ratio-without-lease-wait={:.2} bad-release={:.0}s",
        wall.as_secs_f64(),
        install.as_secs_f64(),
        step.as_secs_f64(),
        GUESTS,
        ideal.as_secs_f64(),
        wall.as_secs_f64() / ideal.as_secs_f64(),
        lease_wait.as_secs_f64(),
        (wall.saturating_sub(lease_wait)).as_secs_f64() / ideal.as_secs_f64(),
        (t.bad_done - t.rolled_out).as_secs_f64(),
    );
}
