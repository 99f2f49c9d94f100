//! Test support for the daemon's end-to-end tests: a machine (a `fastpatch_disk::create` GPT
//! image and a root directory) pointed at the real update server from fastpatch-testsupport,
//! and D-Bus helpers.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use fastpatch_boot_control::{BootControl, GptBootControl, Slot};
use fastpatch_engine::daemon::config::{BootedSlot, DaemonConfig};
use fastpatch_engine::daemon::Daemon;
use fastpatch_engine::dbus;
pub use fastpatch_testsupport::{PrivateBus, SeenEvent, UpdateServer, MACHINE, MIB, NEW};
use futures_util::StreamExt;

pub const OLD: &str = "1.0.0";

/// A machine booted from A (marked good) running `OLD`, pointed at `server`.
pub struct TestMachine {
    pub dir: PathBuf,
    pub disk: PathBuf,
    pub cfg: DaemonConfig,
}

impl TestMachine {
    pub fn new(dir: &Path, server: &UpdateServer, dbus_address: Option<&str>) -> TestMachine {
        let disk = dir.join("disk.img");
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
        let root = dir.join("root");
        for d in ["usr/lib", "etc/flatcar"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("etc/machine-id"), format!("{MACHINE}\n")).unwrap();
        std::fs::write(
            root.join("etc/flatcar/update.conf"),
            format!("GROUP=stable\nSERVER={}\n", server.omaha_url()),
        )
        .unwrap();
        let mut m = TestMachine {
            dir: dir.to_path_buf(),
            disk: disk.clone(),
            cfg: DaemonConfig {
                root,
                disk: Some(disk),
                booted_slot: BootedSlot::A,
                state_file: dir.join("state/engine.json"),
                install_state_dir: dir.join("state/install"),
                boot_id_path: dir.join("boot_id"),
                trusted_keys: vec![server.pub_pem.clone()],
                dbus: dbus_address.is_some(),
                dbus_address: dbus_address.map(str::to_string),
                metrics_socket: None,
                ..DaemonConfig::default()
            },
        };
        m.boot(BootedSlot::A, OLD, 1);
        m
    }

    /// What a boot changes: the slot, the running version, the boot id.
    pub fn boot(&mut self, slot: BootedSlot, version: &str, boot_no: u32) {
        self.cfg.booted_slot = slot;
        std::fs::write(
            self.cfg.root.join("usr/lib/os-release"),
            format!("ID=flatcar\nVERSION={version}\n"),
        )
        .unwrap();
        std::fs::write(
            &self.cfg.boot_id_path,
            format!("4f1c7d6e-0000-4000-8000-{boot_no:012}\n"),
        )
        .unwrap();
    }

    /// The firmware's part of a reboot: the chooser picks (and spends a try of) the next slot.
    pub fn firmware_choose(&self) -> u32 {
        let mut d =
            fastpatch_disk::Disk::open(&self.disk, fastpatch_disk::OpenMode::ReadWrite).unwrap();
        let (p, _) = d.boot_next().unwrap().expect("a bootable slot");
        p.index
    }

    /// What `fastpatch cgpt next` says would boot now.
    pub fn next_boot(&self) -> u32 {
        next_boot(&self.disk)
    }

    pub fn state(&self) -> String {
        std::fs::read_to_string(&self.cfg.state_file).unwrap_or_default()
    }
}

/// Flatcar #388: every Omaha request carries something (an update check, a ping or events).
pub fn assert_no_empty_request(server: &UpdateServer) {
    let bodies = server.omaha_bodies();
    assert!(!bodies.is_empty(), "the server saw no Omaha request");
    for b in bodies {
        assert!(
            b.contains("<app")
                && ["<updatecheck", "<ping", "<event"]
                    .iter()
                    .any(|t| b.contains(t)),
            "an empty Omaha request: {b}"
        );
    }
}

pub fn next_boot(disk: &Path) -> u32 {
    let d = fastpatch_disk::Disk::open(disk, fastpatch_disk::OpenMode::ReadOnly).unwrap();
    d.peek_next().expect("a bootable slot").index
}

/// AttemptUpdate over D-Bus, then the statuses until one of `until` (or 60 s).
pub async fn attempt(bus: &PrivateBus, until: &[&str]) -> Vec<String> {
    let client = dbus::client(Some(&bus.address)).await.expect("client");
    let mut signals = client.receive_status_update().await.unwrap();
    client.attempt_update().await.expect("AttemptUpdate");
    let mut seen = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            Some(sig) = signals.next() => {
                let op = sig.args().unwrap().current_operation.clone();
                let done = until.contains(&op.as_str());
                seen.push(op);
                if done { return seen; }
            }
            _ = &mut deadline => panic!("no {until:?} within 60 s; saw {seen:?}"),
        }
    }
}

pub const ENDED: &[&str] = &[
    "UPDATE_STATUS_UPDATED_NEED_REBOOT",
    "UPDATE_STATUS_REPORTING_ERROR_EVENT",
];

/// Waits (up to 10 s) until the daemon reports IDLE: a busy daemon ignores AttemptUpdate, as
/// update_engine does, so a second attempt must wait for the first to end.
pub async fn wait_idle(bus: &PrivateBus) {
    let client = dbus::client(Some(&bus.address)).await.expect("client");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, op, _, _) = client.get_status().await.expect("GetStatus");
        if op == "UPDATE_STATUS_IDLE" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {op} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the daemon in-process until the sender is used.
pub async fn run_until_stopped(
    cfg: DaemonConfig,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let daemon = Daemon::new(cfg).await.expect("daemon starts");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(daemon.run(async {
        let _ = stop_rx.await;
    }));
    (stop_tx, run)
}
