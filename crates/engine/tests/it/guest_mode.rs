//! The engine on a machine without D-Bus or locksmithd (the QEMU guest's mode): `dbus = false`,
//! the first check right away, and `reboot_after_update` — against the real fastpatch-server on
//! loopback and a real GPT image. The reboot command runs only after the events of the update
//! reached the server.

use crate::support;

use std::time::{Duration, Instant};

use fastpatch_engine::daemon::Daemon;
use fastpatch_engine::schedule::ScheduleConfig;
use support::{TestMachine, UpdateServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_dbus_checks_at_once_stages_and_reboots_after_reporting() {
    let dir = tempfile::tempdir().unwrap();
    let server = UpdateServer::start(dir.path(), 6).await;
    let mut m = TestMachine::new(dir.path(), &server, None);
    let marker = dir.path().join("rebooted");
    m.cfg.dbus = false;
    // Were the bus used, this address would fail the start.
    m.cfg.dbus_address = Some("unix:path=/nonexistent/fastpatch-test-bus".into());
    m.cfg.reboot_after_update = true;
    m.cfg.reboot_command = vec![
        "sh".into(),
        "-c".into(),
        format!("echo reboot > {}", marker.display()),
    ];
    m.cfg.schedule = ScheduleConfig {
        initial: Duration::ZERO,
        initial_fuzz: Duration::ZERO,
        ..ScheduleConfig::default()
    };

    let daemon = Daemon::new(m.cfg.clone())
        .await
        .expect("starts without any D-Bus");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(daemon.run(async {
        let _ = stop_rx.await;
    }));

    let deadline = Instant::now() + Duration::from_secs(90);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "no reboot within 90 s; server saw {:?}",
            server.event_names().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The reboot came after the server had every event of the update.
    let seen = server.event_names().await;
    for want in ["13/1", "14/1", "3/1"] {
        assert!(seen.iter().any(|e| e == want), "{want} missing: {seen:?}");
    }
    assert_eq!(m.next_boot(), 4, "USR-B (partition 4) boots next");
    let _ = stop_tx.send(());
    run.await.unwrap().unwrap();
}
