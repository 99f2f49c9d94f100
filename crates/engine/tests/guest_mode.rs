//! The engine on a machine without D-Bus or locksmithd (the QEMU guest's mode): `dbus = false`,
//! the first check right away, and `reboot_after_update` — against the real fastpatch-server on
//! loopback and a real GPT image. The reboot command runs only after the events of the update
//! reached the server.

use std::path::Path;
use std::time::{Duration, Instant};

use fastpatch_boot_control::{BootControl, GptBootControl, Slot};
use fastpatch_engine::daemon::config::{BootedSlot, DaemonConfig};
use fastpatch_engine::daemon::Daemon;
use fastpatch_engine::schedule::ScheduleConfig;
use fastpatch_omaha::FLATCAR_APP_ID;

const MIB: u64 = 1 << 20;
const MACHINE: &str = "0123456789abcdef0123456789abcdef";

async fn server_events(base: &str) -> Vec<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!("{base}/api/v1/apps/{FLATCAR_APP_ID}/instances/{MACHINE}");
    let Ok(resp) = reqwest::Client::new()
        .get(url)
        .bearer_auth("admin-token")
        .send()
        .await
    else {
        return Vec::new();
    };
    let text = resp.text().await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let mut events: Vec<(i64, String)> = v["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["at"].as_i64().unwrap_or(0),
                        format!("{}/{}", e["event_type"], e["event_result"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    events.sort();
    events.into_iter().map(|(_, e)| e).collect()
}

fn next_boot(disk: &Path) -> u32 {
    let d = fastpatch_disk::Disk::open(disk, fastpatch_disk::OpenMode::ReadOnly).unwrap();
    d.peek_next().expect("a bootable slot").index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_dbus_checks_at_once_stages_and_reboots_after_reporting() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();

    // The real update server with version 2 on the stable channel.
    let server =
        fastpatch_server::Server::start(fastpatch_server::Config::for_tests(&p.join("server")))
            .await
            .expect("server starts");
    let image = p.join("usr.img");
    let data: Vec<u8> = (0..6 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&image, &data).unwrap();
    let key = fastpatch_payload::keys::generate_key().unwrap();
    let pub_pem = p.join("key.pub.pem");
    std::fs::write(
        &pub_pem,
        fastpatch_payload::keys::public_key_pem(&key.to_public_key()).unwrap(),
    )
    .unwrap();
    let payload = p.join("update.gz");
    fastpatch_payload::generate::generate(
        &image,
        &[key],
        &payload,
        &fastpatch_payload::generate::GenerateOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let now = chrono_now();
    fastpatch_server::payloads::publish(
        server.store(),
        &p.join("server"),
        &fastpatch_server::payloads::Publish {
            app_id: FLATCAR_APP_ID,
            version: "2.0.0",
            arch: "amd64",
            file: &payload,
            file_name: Some("flatcar_production_update.gz"),
            base_url: None,
        },
        now,
    )
    .await
    .expect("publish");
    server
        .store()
        .set_channel(FLATCAR_APP_ID, "stable", "2.0.0", now)
        .await
        .expect("point stable at 2.0.0");

    // A machine booted from A (good), version 1.
    let disk = p.join("disk.img");
    let spec = fastpatch_disk::LayoutSpec {
        total_size: 64 * MIB,
        usr_size: 8 * MIB,
        efi_size: 2 * MIB,
        oem_size: 2 * MIB,
        ..Default::default()
    };
    fastpatch_disk::create(&disk, &spec, false).unwrap();
    GptBootControl::new(&disk, Slot::A)
        .mark_booted_good()
        .unwrap();
    let root = p.join("root");
    for d in ["usr/lib", "etc/flatcar"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(
        root.join("usr/lib/os-release"),
        "ID=flatcar\nVERSION=1.0.0\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/machine-id"), format!("{MACHINE}\n")).unwrap();
    std::fs::write(
        root.join("etc/flatcar/update.conf"),
        format!("GROUP=stable\nSERVER={}/v1/update/\n", server.base_url()),
    )
    .unwrap();
    std::fs::write(p.join("boot_id"), "4f1c7d6e-0000-4000-8000-000000000002\n").unwrap();
    let marker = p.join("rebooted");
    let cfg = DaemonConfig {
        root,
        disk: Some(disk.clone()),
        booted_slot: BootedSlot::A,
        state_file: p.join("state/engine.json"),
        install_state_dir: p.join("state/install"),
        boot_id_path: p.join("boot_id"),
        trusted_keys: vec![pub_pem],
        dbus: false,
        // Were the bus used, this address would fail the start.
        dbus_address: Some("unix:path=/nonexistent/fastpatch-test-bus".into()),
        reboot_after_update: true,
        reboot_command: vec![
            "sh".into(),
            "-c".into(),
            format!("echo reboot > {}", marker.display()),
        ],
        schedule: ScheduleConfig {
            initial: Duration::ZERO,
            initial_fuzz: Duration::ZERO,
            ..ScheduleConfig::default()
        },
        metrics_socket: None,
        ..DaemonConfig::default()
    };

    let daemon = Daemon::new(cfg).await.expect("starts without any D-Bus");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(daemon.run(async {
        let _ = stop_rx.await;
    }));

    let deadline = Instant::now() + Duration::from_secs(90);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "no reboot within 90 s; server saw {:?}",
            server_events(server.base_url()).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The reboot came after the server had every event of the update.
    let seen = server_events(server.base_url()).await;
    for want in ["13/1", "14/1", "3/1"] {
        assert!(seen.iter().any(|e| e == want), "{want} missing: {seen:?}");
    }
    assert_eq!(next_boot(&disk), 4, "USR-B (partition 4) boots next");
    let _ = stop_tx.send(());
    run.await.unwrap().unwrap();
    server.shutdown().await;
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
