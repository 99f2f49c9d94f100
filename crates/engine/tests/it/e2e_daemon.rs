//! The daemon end to end, all real: fastpatch-server on loopback with a signed payload
//! published on the stable channel, a GPT image from `fastpatch_disk::create`, a private
//! dbus-daemon, AttemptUpdate over D-Bus. What the server recorded is read back through its
//! REST API.

use crate::support;

use std::time::Duration;

use fastpatch_boot_control::{BootControl, GptBootControl, Slot};
use fastpatch_engine::daemon::config::BootedSlot;
use fastpatch_engine::daemon::Daemon;
use fastpatch_engine::dbus;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_download_verify_stage_then_b_boots_next_and_reports_complete() {
    let dir = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start();
    let server = UpdateServer::start(dir.path(), 6).await;
    let mut m = TestMachine::new(dir.path(), &server, Some(&bus.address));

    let (stop, run) = run_until_stopped(m.cfg.clone()).await;
    let seen = attempt(&bus, ENDED).await;
    assert_eq!(
        seen.first().map(String::as_str),
        Some("UPDATE_STATUS_CHECKING_FOR_UPDATE")
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("UPDATE_STATUS_UPDATED_NEED_REBOOT"),
        "{seen:?}"
    );
    for want in [
        "UPDATE_STATUS_UPDATE_AVAILABLE",
        "UPDATE_STATUS_DOWNLOADING",
        "UPDATE_STATUS_VERIFYING",
        "UPDATE_STATUS_FINALIZING",
    ] {
        assert!(
            seen.iter().any(|o| o == want),
            "{want} missing from {seen:?}"
        );
    }
    let client = dbus::client(Some(&bus.address)).await.unwrap();
    let (checked, progress, op, version, size) = client.get_status().await.unwrap();
    assert!(checked > 0);
    assert_eq!(
        (progress, op.as_str(), version.as_str(), size),
        (
            1.0,
            "UPDATE_STATUS_UPDATED_NEED_REBOOT",
            NEW,
            server.payload_size as i64
        )
    );
    // The server saw the machine's events in order (the reporter is sequential).
    let ev = server.wait_events(3).await;
    assert_eq!(
        ev.iter().map(SeenEvent::short).collect::<Vec<_>>(),
        ["13/1", "14/1", "3/1"]
    );
    assert_eq!(
        server.wait_instance("installed").await,
        (OLD.into(), "installed".into())
    );
    assert_eq!(m.next_boot(), fastpatch_disk::USR_B_INDEX, "B is staged");
    assert!(m.state().contains("\"gpt_staged\": true"), "{}", m.state());
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();

    // Reboot into B: the chooser spends B's try, version 2 runs, no health checks configured.
    assert_eq!(m.firmware_choose(), fastpatch_disk::USR_B_INDEX);
    m.boot(BootedSlot::B, NEW, 2);
    let (stop, run) = run_until_stopped(m.cfg.clone()).await;
    attempt(
        &bus,
        &["UPDATE_STATUS_IDLE", "UPDATE_STATUS_REPORTING_ERROR_EVENT"],
    )
    .await;
    let ev = server.wait_events(4).await;
    assert_eq!(
        ev.iter().map(SeenEvent::short).collect::<Vec<_>>(),
        ["13/1", "14/1", "3/1", "3/2"]
    );
    assert_eq!(ev[3].previous_version.as_deref(), Some(OLD));
    assert_eq!(
        server.wait_instance("complete").await,
        (NEW.into(), "complete".into())
    );
    let b = GptBootControl::new(&m.disk, Slot::B)
        .slot_state(Slot::B)
        .unwrap();
    assert!(b.attrs.successful, "B was marked good");
    assert_eq!(m.next_boot(), fastpatch_disk::USR_B_INDEX);
    assert!(!server.stable_halted().await);
    assert_no_empty_request(&server);
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_payload_on_the_server_fails_and_leaves_the_slot_unstaged() {
    let dir = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start();
    let server = UpdateServer::start(dir.path(), 6).await;
    server.tamper_payload();
    let m = TestMachine::new(dir.path(), &server, Some(&bus.address));
    let (stop, run) = run_until_stopped(m.cfg.clone()).await;
    let seen = attempt(&bus, ENDED).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("UPDATE_STATUS_REPORTING_ERROR_EVENT"),
        "{seen:?}"
    );
    assert_eq!(m.next_boot(), fastpatch_disk::USR_A_INDEX, "nothing staged");
    assert!(!m.state().contains("\"staged\": {"), "{}", m.state());
    let ev = server.wait_events(2).await;
    assert_eq!(ev.first().map(SeenEvent::short).as_deref(), Some("13/1"));
    let last = ev.last().expect("events");
    assert_eq!(last.short(), "3/0", "{ev:?}");
    assert!(last.error_code.is_some_and(|c| c != 0), "{ev:?}");
    // Safe mode (the default policy) halts the group on the first failure.
    assert!(server.wait_stable_halted().await);
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_gate_reboots_falls_back_and_reports_44() {
    let dir = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start();
    let server = UpdateServer::start(dir.path(), 6).await;
    let mut m = TestMachine::new(dir.path(), &server, Some(&bus.address));
    let (stop, run) = run_until_stopped(m.cfg.clone()).await;
    let seen = attempt(&bus, ENDED).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("UPDATE_STATUS_UPDATED_NEED_REBOOT")
    );
    server.wait_events(3).await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();

    // "Reboot": the chooser spends B's one try; the new version boots with a failing check.
    assert_eq!(m.firmware_choose(), fastpatch_disk::USR_B_INDEX);
    m.boot(BootedSlot::B, NEW, 2);
    let marker = dir.path().join("rebooted");
    let mut cfg = m.cfg.clone();
    cfg.health.commands = vec![vec!["false".into()]];
    cfg.health.timeout_secs = 1;
    cfg.health.interval_secs = 1;
    cfg.reboot_command = vec!["touch".into(), marker.display().to_string()];
    let (stop, run) = run_until_stopped(cfg).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !marker.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(marker.exists(), "the reboot command ran");
    let b = GptBootControl::new(&m.disk, Slot::B)
        .slot_state(Slot::B)
        .unwrap();
    assert!(!b.attrs.successful, "B was not marked good");
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert_eq!(
        m.next_boot(),
        fastpatch_disk::USR_A_INDEX,
        "the chooser falls back to A"
    );
    assert_eq!(server.event_names().await, ["13/1", "14/1", "3/1"]);

    // Back on A, version 1: the next check carries the rollback report.
    assert_eq!(m.firmware_choose(), fastpatch_disk::USR_A_INDEX);
    m.boot(BootedSlot::A, OLD, 3);
    let (stop, run) = run_until_stopped(m.cfg.clone()).await;
    attempt(
        &bus,
        &[
            "UPDATE_STATUS_UPDATE_AVAILABLE",
            "UPDATE_STATUS_IDLE",
            "UPDATE_STATUS_REPORTING_ERROR_EVENT",
        ],
    )
    .await;
    let ev = server.wait_events(4).await;
    assert_eq!(
        ev.iter().map(SeenEvent::short).collect::<Vec<_>>(),
        ["13/1", "14/1", "3/1", "3/0"]
    );
    assert_eq!(
        ev[3].error_code.map(|c| c & 0xffff),
        Some(44),
        "rollback: {ev:?}"
    );
    // Safe mode halts the group on a rollback: the next machine is not offered 2.0.0.
    assert!(server.wait_stable_halted().await);
    assert_eq!(server.wait_instance("error").await.1, "error");
    assert_no_empty_request(&server);
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_stopped_mid_download_restarts_the_attempt_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start();
    let server = UpdateServer::start(dir.path(), 6).await;
    let mut m = TestMachine::new(dir.path(), &server, Some(&bus.address));
    m.cfg.limits.download_bytes_per_sec = Some(2 << 20); // ~3 s for the payload
    let daemon = Daemon::new(m.cfg.clone()).await.expect("daemon starts");
    let run = tokio::spawn(daemon.run(std::future::pending()));
    attempt(&bus, &["UPDATE_STATUS_DOWNLOADING"]).await;
    run.abort(); // the daemon dies between actions, mid-download
    let _ = run.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(m.next_boot(), fastpatch_disk::USR_A_INDEX, "nothing staged");
    assert!(!m.state().contains("\"staged\": {"), "no stage intent");

    m.cfg.limits.download_bytes_per_sec = None;
    let (stop, run) = run_until_stopped(m.cfg.clone()).await;
    let seen = attempt(&bus, ENDED).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("UPDATE_STATUS_UPDATED_NEED_REBOOT"),
        "{seen:?}"
    );
    assert_eq!(m.next_boot(), fastpatch_disk::USR_B_INDEX);
    // The first attempt's 13/1, then the whole second attempt.
    let names: Vec<String> = server
        .wait_events(4)
        .await
        .iter()
        .map(SeenEvent::short)
        .collect();
    assert_eq!(names, ["13/1", "13/1", "14/1", "3/1"]);
    assert_no_empty_request(&server);
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}

/// Two releases, [`OLD`] and [`NEW`], as full payloads signed by a fresh key, published on the
/// real server in that order on the stable channel; the server (holding the key) makes the
/// delta OLD → NEW itself. USR-A holds the OLD image (one byte changed when `usr_a_differs`).
/// Returns the server, the delta the server made, the machine and the new image.
async fn delta_machine(
    dir: &std::path::Path,
    bus: &PrivateBus,
    usr_a_differs: bool,
) -> (
    UpdateServer,
    fastpatch_testsupport::DeltaRow,
    TestMachine,
    Vec<u8>,
) {
    // 6 MiB of pseudo-random bytes; the new image rewrites 256 KiB and moves 1 MiB.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let old: Vec<u8> = (0..6 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut new = old.clone();
    new[(3 << 20)..(3 << 20) + (256 << 10)].fill(0x42);
    new.copy_within((1 << 20)..(2 << 20), 4 << 20);
    let key_pem = dir.join("release-key.pem");
    let pub_pem = dir.join("release-key.pub.pem");
    let key = fastpatch_payload::keys::write_key_pair(&key_pem, &pub_pem).unwrap();
    let full = |name: &str, image: &[u8]| {
        let img = dir.join(format!("{name}.img"));
        std::fs::write(&img, image).unwrap();
        let payload = dir.join(format!("{name}.gz"));
        fastpatch_payload::generate::generate(
            &img,
            std::slice::from_ref(&key),
            &payload,
            &fastpatch_payload::generate::GenerateOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        payload
    };
    let (old_payload, new_payload) = (full("old", &old), full("new", &new));
    let (server, delta) =
        UpdateServer::start_with_delta(dir, OLD, &old_payload, &new_payload, &key_pem, pub_pem)
            .await;
    assert_eq!(
        delta.state,
        fastpatch_testsupport::DeltaState::Ready,
        "{delta:?}"
    );
    assert!(
        (delta.size as u64) < server.payload_size / 4,
        "delta {} bytes, full {}",
        delta.size,
        server.payload_size
    );
    let m = TestMachine::new(dir, &server, Some(&bus.address));
    let mut usr_a = old;
    if usr_a_differs {
        usr_a[5 * MIB as usize] ^= 1;
    }
    write_partition(&m.disk, fastpatch_disk::USR_A_INDEX, &usr_a);
    (server, delta, m, new)
}

/// An update check as stock Flatcar sends it (`delta_okay="false"`) from [`OLD`].
fn stock_flatcar_check(machine: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="update_engine-0.4.10" updaterversion="update_engine-0.4.10" installsource="scheduler" ismachine="1">
  <os version="Chateau" platform="CoreOS" sp="{OLD}_x86_64"></os>
  <app appid="{{e96281a6-d1af-4bde-9a0a-97b76e56dc57}}" version="{OLD}" track="stable" bootid="{{b1a2c3d4-0000-0000-0000-000000000000}}" oem="qemu" oemversion="0.1" alephversion="{OLD}" machineid="{machine}" machinealias="" lang="en-US" board="amd64-usr" hardware_class="" delta_okay="false">
    <ping active="1"></ping>
    <updatecheck></updatecheck>
  </app>
</request>"#
    )
}

fn write_partition(disk: &std::path::Path, index: u32, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let (off, _) = fastpatch_disk::Disk::open(disk, fastpatch_disk::OpenMode::ReadOnly)
        .unwrap()
        .partition_byte_range(index)
        .unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(data, off).unwrap();
}

fn read_partition(disk: &std::path::Path, index: u32, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let (off, _) = fastpatch_disk::Disk::open(disk, fastpatch_disk::OpenMode::ReadOnly)
        .unwrap()
        .partition_byte_range(index)
        .unwrap();
    let mut buf = vec![0u8; len];
    std::fs::File::open(disk)
        .unwrap()
        .read_exact_at(&mut buf, off)
        .unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_made_delta_is_offered_and_applied_against_the_booted_slot() {
    let dir = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start();
    let (server, delta, m, new) = delta_machine(dir.path(), &bus, false).await;
    // Two machines update at once here: safe mode would hold the second.
    server.stable_without_safe_mode().await;
    // Stock Flatcar on the same version applies neither the delta nor the zstd full
    // payload (the only ones published here): a clear error, no bytes it would fail on.
    let stock = server
        .omaha_post(&stock_flatcar_check("fedcba9876543210fedcba9876543210"))
        .await;
    assert!(
        stock.contains(r#"status="error-noPackageFound""#)
            && !stock.contains("IsDeltaPayload")
            && !stock.contains("/v1/payloads/"),
        "{stock}"
    );
    let (stop, run) = run_until_stopped(m.cfg.clone()).await;
    let seen = attempt(&bus, ENDED).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("UPDATE_STATUS_UPDATED_NEED_REBOOT"),
        "{seen:?}"
    );
    let check = server
        .omaha_bodies()
        .into_iter()
        .find(|b| b.contains("<updatecheck") && b.contains(MACHINE))
        .expect("the engine's update check");
    assert!(check.contains(r#"delta_okay="true""#), "{check}");
    // The engine downloaded the delta, and only the delta.
    let downloads = server.payload_paths();
    assert!(!downloads.is_empty(), "no download");
    assert!(
        downloads
            .iter()
            .all(|p| p == &format!("/v1/payloads/{}/{}", delta.id, delta.file_name)),
        "{downloads:?}"
    );
    assert_eq!(
        read_partition(&m.disk, fastpatch_disk::USR_B_INDEX, new.len()),
        new,
        "USR-B holds the new image"
    );
    assert_eq!(m.next_boot(), fastpatch_disk::USR_B_INDEX, "B is staged");
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_that_does_not_fit_the_booted_slot_reports_20_then_the_full_payload_installs() {
    let dir = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start();
    let (server, delta, m, new) = delta_machine(dir.path(), &bus, true).await;
    // Safe mode would halt the group at the failure; here the retry is what is tested.
    server.stable_without_safe_mode().await;
    let (stop, run) = run_until_stopped(m.cfg.clone()).await;
    let seen = attempt(&bus, ENDED).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("UPDATE_STATUS_REPORTING_ERROR_EVENT"),
        "{seen:?}"
    );
    // 13/1, then (the delta is small enough to arrive first) 14/1, then the failure.
    let ev = server.wait_events(3).await;
    let last = ev.last().expect("events");
    assert_eq!(last.short(), "3/0", "{ev:?}");
    let base = last
        .error_code
        .map(|c| fastpatch_omaha::ErrorCode(c as u32).base());
    assert_eq!(base, Some(20), "{ev:?}");
    assert_eq!(m.next_boot(), fastpatch_disk::USR_A_INDEX, "nothing staged");
    // The next check asks for the full payload, gets it, and it installs. It is asked for once
    // the error report is done: a busy daemon ignores AttemptUpdate (CI once lost it so).
    wait_idle(&bus).await;
    let seen = attempt(&bus, ENDED).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("UPDATE_STATUS_UPDATED_NEED_REBOOT"),
        "{seen:?}"
    );
    let checks: Vec<String> = server
        .omaha_bodies()
        .into_iter()
        .filter(|b| b.contains("<updatecheck"))
        .collect();
    assert!(checks.len() >= 2, "{checks:?}");
    assert!(checks[0].contains(r#"delta_okay="true""#), "{}", checks[0]);
    assert!(
        checks.last().unwrap().contains(r#"delta_okay="false""#),
        "{}",
        checks.last().unwrap()
    );
    let downloads = server.payload_paths();
    assert_eq!(
        downloads.first().map(String::as_str),
        Some(format!("/v1/payloads/{}/{}", delta.id, delta.file_name).as_str()),
        "{downloads:?}"
    );
    assert_eq!(
        downloads.last().map(String::as_str),
        Some(
            format!(
                "/v1/payloads/{}/flatcar_production_update.gz",
                server.package_id
            )
            .as_str()
        ),
        "{downloads:?}"
    );
    assert_eq!(
        read_partition(&m.disk, fastpatch_disk::USR_B_INDEX, new.len()),
        new,
        "USR-B holds the new image"
    );
    assert_eq!(m.next_boot(), fastpatch_disk::USR_B_INDEX, "B is staged");
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}
