//! The locksmithd binary against a real etcd and a real private dbus-daemon with a stand-in
//! update engine registered on it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fastpatch_locksmith::dbus::NEED_REBOOT;
use fastpatch_locksmith::etcd::{EtcdConfig, EtcdStore};
use fastpatch_locksmith::reboot::utmp_record;
use fastpatch_locksmith::store::{Coordinator, RetryPolicy};
use fastpatch_locksmith::testsupport::{EtcdServer, FakeEngine};
use fastpatch_testsupport::PrivateBus;

const MID: &str = "feedfacefeedfacefeedfacefeedface";

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn setup_root(root: &Path, conf: &str) {
    std::fs::create_dir_all(root.join("etc/flatcar")).unwrap();
    std::fs::create_dir_all(root.join("run")).unwrap();
    std::fs::create_dir_all(root.join("dev/pts")).unwrap();
    std::fs::write(root.join("etc/flatcar/update.conf"), conf).unwrap();
    std::fs::write(root.join("etc/machine-id"), format!("{MID}\n")).unwrap();
    std::fs::write(root.join("run/utmp"), utmp_record(7, "pts/0", "core")).unwrap();
    std::fs::write(root.join("dev/pts/0"), "").unwrap();
}

fn start(root: &Path, etcd: &str, bus: &str, extra: &[(&str, String)]) -> Daemon {
    let mut c = Command::new(env!("CARGO_BIN_EXE_locksmithd"));
    c.arg("--root")
        .arg(root)
        .env("LOCKSMITHD_ENDPOINT", etcd)
        .env("LOCKSMITHD_DBUS_ADDRESS", bus)
        .env(
            "LOCKSMITHD_REBOOT_COMMAND",
            format!("touch {}", root.join("rebooted").display()),
        )
        .env("LOCKSMITHD_REBOOT_DELAY", "1s")
        .env("LOCKSMITHD_LOCK_RETRY", "200ms")
        .env(
            "LOCKSMITHD_LOG",
            "fastpatch_locksmith=debug,locksmithd=debug",
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("daemon.log")).unwrap());
    for (k, v) in extra {
        c.env(k, v);
    }
    Daemon(c.spawn().expect("start locksmithd"))
}

/// Waits until every daemon under `dirs` runs, then emits the engine's "reboot needed" on the
/// bus (no engine on it: locksmithctl sends the signal, as locksmith's test helper does).
fn need_reboot_once_running(dirs: &[tempfile::TempDir], bus: &str) {
    for dir in dirs {
        wait_for("running", Duration::from_secs(10), || {
            coordinator_conf(dir.path()).contains("STATE=running")
        });
    }
    let o = Command::new(env!("CARGO_BIN_EXE_locksmithctl"))
        .args(["-dbus-address", bus, "send-need-reboot"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One sample from the daemon's metrics socket (`name` with its labels), read as a plain
/// reader would; `None` while the socket or the sample is not there.
fn metric(root: &Path, name: &str) -> Option<f64> {
    use std::io::Read;
    let sock = root.join(fastpatch_locksmith::config::METRICS_SOCKET);
    let mut s = std::os::unix::net::UnixStream::connect(sock).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn coordinator_conf(root: &Path) -> String {
    std::fs::read_to_string(root.join("run/update-engine/coordinator.conf")).unwrap_or_default()
}

async fn coord(e: &EtcdServer) -> Coordinator<EtcdStore> {
    let s = EtcdStore::connect(&EtcdConfig::local().with_endpoints(&e.endpoint()))
        .await
        .unwrap();
    Coordinator::new(s, "", RetryPolicy::short())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lock_waits_for_slot_reboots_and_releases_after_good_boot() {
    let e = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let bus = PrivateBus::start();
    let (engine, status) = FakeEngine::serve(&bus.address, "UPDATE_STATUS_IDLE")
        .await
        .unwrap();
    let c = coord(&e).await;
    c.lock("other-machine", None).await.unwrap(); // max 1: full
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup_root(root, "GROUP=stable\nREBOOT_STRATEGY=\"etcd-lock\"\n");

    // A lock retry far beyond the test's patience: only the etcd watch can wake the daemon
    // when the other machine releases its slot.
    let d = start(
        root,
        &e.endpoint(),
        &bus.address,
        &[("LOCKSMITHD_LOCK_RETRY", "10m".to_string())],
    );
    wait_for("STATE=running", Duration::from_secs(15), || {
        coordinator_conf(root).contains("STATE=running")
    });
    assert_eq!(
        coordinator_conf(root),
        "NAME=locksmithd\nSTRATEGY=etcd-lock\nSTATE=running\n"
    );
    FakeEngine::set(&engine, &status, NEED_REBOOT)
        .await
        .unwrap();
    wait_for("reboot-planned", Duration::from_secs(10), || {
        coordinator_conf(root).contains("STATE=reboot-planned")
    });
    // The semaphore is full: no reboot while the other machine holds it. The metrics say the
    // daemon tried and found it full (and still waits for a slot).
    wait_for(
        "a lock attempt that found the semaphore full",
        Duration::from_secs(10),
        || {
            metric(
                root,
                "fastpatch_locksmithd_lock_attempts_total{result=\"full\"}",
            )
            .is_some_and(|n| n >= 1.0)
        },
    );
    assert!(
        !root.join("rebooted").exists(),
        "{}",
        std::fs::read_to_string(root.join("daemon.log")).unwrap()
    );
    assert_eq!(
        metric(root, "fastpatch_locksmithd_waiting_for_slot"),
        Some(1.0)
    );
    assert_eq!(metric(root, "fastpatch_locksmithd_holds_slot"), Some(0.0));
    assert_eq!(
        metric(root, "fastpatch_locksmithd_semaphore_holders"),
        Some(1.0)
    );
    assert_eq!(
        metric(root, "fastpatch_locksmithd_semaphore_max"),
        Some(1.0)
    );
    c.unlock("other-machine").await.unwrap();
    wait_for("reboot", Duration::from_secs(15), || {
        root.join("rebooted").exists()
    });
    let told = std::fs::read_to_string(root.join("dev/pts/0")).unwrap();
    assert!(
        told.contains("Broadcast message from locksmithd at "),
        "{told}"
    );
    assert!(told.contains("System reboot in 1 second!"), "{told}");
    assert!(coordinator_conf(root).contains("STATE=rebooting"));
    assert_eq!(c.get().await.unwrap().holders(), [MID]);
    assert_eq!(
        metric(root, "fastpatch_locksmithd_reboots_total"),
        Some(1.0)
    );
    assert_eq!(metric(root, "fastpatch_locksmithd_holds_slot"), Some(1.0));
    assert_eq!(
        metric(root, "fastpatch_locksmithd_state{state=\"rebooting\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(root, "fastpatch_locksmithd_waiting_for_slot"),
        Some(0.0)
    );
    drop(d);

    // "After the reboot": the engine is idle; the hold is released once the boot is good.
    std::fs::remove_file(root.join("rebooted")).unwrap();
    FakeEngine::set(&engine, &status, "UPDATE_STATUS_IDLE")
        .await
        .unwrap();
    let good = root.join("boot-good");
    let _d = start(
        root,
        &e.endpoint(),
        &bus.address,
        &[(
            "LOCKSMITHD_BOOT_GOOD_COMMAND",
            format!("test -e {}", good.display()),
        )],
    );
    wait_for("STATE=starting", Duration::from_secs(10), || {
        coordinator_conf(root).contains("STATE=starting")
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        c.get().await.unwrap().holders(),
        [MID],
        "released before the boot was good"
    );
    // The new daemon read the semaphore at start: this machine holds the slot it took.
    wait_for(
        "the held slot in the metrics",
        Duration::from_secs(10),
        || metric(root, "fastpatch_locksmithd_holds_slot") == Some(1.0),
    );
    assert_eq!(
        metric(root, "fastpatch_locksmithd_state{state=\"wait_boot_good\"}"),
        Some(1.0)
    );
    std::fs::write(&good, "").unwrap();
    wait_for("release", Duration::from_secs(15), || {
        coordinator_conf(root).contains("STATE=running")
    });
    assert!(c.get().await.unwrap().holders().is_empty());
    assert!(!root.join("rebooted").exists());
    assert_eq!(metric(root, "fastpatch_locksmithd_holds_slot"), Some(0.0));
    assert_eq!(
        metric(root, "fastpatch_locksmithd_semaphore_holders"),
        Some(0.0)
    );
    assert_eq!(
        metric(
            root,
            "fastpatch_locksmithd_errors_total{kind=\"etcd_unlock\"}"
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_daemon_hold_is_freed_after_lease_ttl() {
    let e = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let bus = PrivateBus::start();
    let (_engine, _status) = FakeEngine::serve(&bus.address, NEED_REBOOT).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // No logged-in users: no broadcast wait.
    setup_root(root, "REBOOT_STRATEGY=etcd-lock\nLOCKSMITHD_LEASE_TTL=2s\n");
    std::fs::remove_file(root.join("run/utmp")).unwrap();
    let mut d = start(root, &e.endpoint(), &bus.address, &[]);
    wait_for("reboot", Duration::from_secs(15), || {
        root.join("rebooted").exists()
    });
    let c = coord(&e).await;
    assert_eq!(c.get().await.unwrap().holders(), [MID]);
    // While the daemon lives, the hold outlives the TTL.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(c.get().await.unwrap().holders(), [MID]);
    d.0.kill().unwrap();
    d.0.wait().unwrap();
    assert_eq!(
        c.lock("next", None).await.unwrap_err().to_string(),
        "semaphore is at 0"
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    c.lock("next", None).await.unwrap();
    assert_eq!(c.get().await.unwrap().holders(), ["next"]);
}

/// A hold tied to a lease must outlive the reboot until the next boot's locksmithd takes it
/// over: the lease is refreshed right before the reboot, so the whole TTL is left then (a
/// lease refreshed every TTL/3 may otherwise have only 2/3 of it; the QEMU fleet test saw a
/// slot given away mid-reboot that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_refreshed_right_before_the_reboot() {
    let e = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let bus = PrivateBus::start();
    let (engine, status) = FakeEngine::serve(&bus.address, "UPDATE_STATUS_IDLE")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup_root(
        root,
        "REBOOT_STRATEGY=etcd-lock\nLOCKSMITHD_LEASE_TTL=30s\n",
    );
    std::fs::remove_file(root.join("run/utmp")).unwrap();
    let _d = start(root, &e.endpoint(), &bus.address, &[]);
    let c = coord(&e).await;
    let client = c.store().client();
    let ttl_left = || {
        let mut client = client.clone();
        async move {
            let leases = client.leases().await.unwrap();
            let [lease] = leases.leases() else {
                return None;
            };
            let left = client.lease_time_to_live(lease.id(), None).await.unwrap();
            Some(left.ttl())
        }
    };
    // The daemon's lease is granted at its start and next refreshed 10 s later.
    let started = Instant::now();
    while ttl_left().await.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no lease granted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(ttl_left().await.unwrap() <= 25, "not refreshed yet");
    FakeEngine::set(&engine, &status, NEED_REBOOT)
        .await
        .unwrap();
    wait_for("reboot", Duration::from_secs(15), || {
        root.join("rebooted").exists()
    });
    assert_eq!(c.get().await.unwrap().holders(), [MID]);
    let left = ttl_left().await.unwrap();
    assert!(
        left >= 28,
        "the hold's lease has only {left} s of 30 left at the reboot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_strategy_reacts_to_send_need_reboot_and_off_does_not() {
    let bus = PrivateBus::start();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut daemons = vec![];
    for (dir, strategy) in dirs.iter().zip(["reboot", "off"]) {
        setup_root(dir.path(), &format!("REBOOT_STRATEGY={strategy}\n"));
        std::fs::remove_file(dir.path().join("run/utmp")).unwrap();
        daemons.push(start(dir.path(), "http://127.0.0.1:1", &bus.address, &[]));
    }
    need_reboot_once_running(&dirs, &bus.address);
    wait_for("reboot", Duration::from_secs(10), || {
        dirs[0].path().join("rebooted").exists()
    });
    assert_eq!(
        coordinator_conf(dirs[0].path()),
        "NAME=locksmithd\nSTRATEGY=reboot\nSTATE=rebooting\n"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!dirs[1].path().join("rebooted").exists());
    assert_eq!(
        coordinator_conf(dirs[1].path()),
        "NAME=locksmithd\nSTRATEGY=off\nSTATE=running\n"
    );
}

/// REBOOT_METHOD=kexec: the loader runs first; when it fails (here: exit 3), and when the
/// kernel loaded but systemd cannot start kexec.target (no systemd on this bus), the firmware
/// reboot follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kexec_reboot_that_cannot_start_falls_back_to_the_firmware_reboot() {
    let bus = PrivateBus::start();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut daemons = vec![];
    for (dir, exit) in dirs.iter().zip([3, 0]) {
        setup_root(dir.path(), "REBOOT_STRATEGY=reboot\nREBOOT_METHOD=kexec\n");
        std::fs::remove_file(dir.path().join("run/utmp")).unwrap();
        let load = format!("touch {}; exit {exit}", dir.path().join("loaded").display());
        daemons.push(start(
            dir.path(),
            "http://127.0.0.1:1",
            &bus.address,
            &[("LOCKSMITHD_KEXEC_LOAD_COMMAND", load)],
        ));
    }
    need_reboot_once_running(&dirs, &bus.address);
    for (dir, why) in dirs
        .iter()
        .zip(["exited with exit status: 3", "kexec.target"])
    {
        wait_for("the firmware reboot", Duration::from_secs(10), || {
            dir.path().join("rebooted").exists()
        });
        assert!(dir.path().join("loaded").exists(), "the loader ran first");
        let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
        assert!(log.contains("rebooting method=kexec"), "{log}");
        assert!(
            log.contains("kexec reboot not possible") && log.contains(why),
            "the log says why ({why}): {log}"
        );
    }
}

#[test]
fn an_unknown_reboot_method_stops_locksmithd() {
    let dir = tempfile::tempdir().unwrap();
    setup_root(dir.path(), "REBOOT_STRATEGY=reboot\nREBOOT_METHOD=warp\n");
    let out = Command::new(env!("CARGO_BIN_EXE_locksmithd"))
        .arg("--root")
        .arg(dir.path())
        .output()
        .expect("running locksmithd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "locksmithd started anyway: {stderr}");
    assert!(
        stderr.contains("unknown REBOOT_METHOD \"warp\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetlock_strategy_takes_and_releases_a_slot() {
    let e = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let bus = PrivateBus::start();
    let (engine, status) = FakeEngine::serve(&bus.address, NEED_REBOOT).await.unwrap();
    let c = coord(&e).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    setup_root(root, "REBOOT_STRATEGY=fleetlock\n");
    std::fs::remove_file(root.join("run/utmp")).unwrap();
    let groups = root.join("groups.conf");
    std::fs::write(&groups, "default=1\n").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let store = c.store().clone();
    tokio::spawn(fastpatch_locksmith::fleetlock::serve(
        listener,
        fastpatch_locksmith::fleetlock::Server::new(
            store,
            fastpatch_locksmith::fleetlock::GroupConfig::new(groups),
        ),
    ));
    // No system CA certificates (a minimal OS): a plain-HTTP FleetLock server still works.
    let fl = [
        ("LOCKSMITHD_FLEETLOCK_URL", url),
        (
            "SSL_CERT_FILE",
            root.join("no-ca-bundle.pem").display().to_string(),
        ),
        ("SSL_CERT_DIR", root.join("no-ca-dir").display().to_string()),
    ];
    let d = start(root, &e.endpoint(), &bus.address, &fl);
    wait_for("reboot", Duration::from_secs(15), || {
        root.join("rebooted").exists()
    });
    assert_eq!(c.get().await.unwrap().holders(), [MID]);
    drop(d);
    FakeEngine::set(&engine, &status, "UPDATE_STATUS_IDLE")
        .await
        .unwrap();
    let _d = start(root, &e.endpoint(), &bus.address, &fl);
    wait_for("release", Duration::from_secs(15), || {
        coordinator_conf(root).contains("STATE=running")
    });
    assert!(c.get().await.unwrap().holders().is_empty());
    assert_eq!(
        coordinator_conf(root),
        "NAME=locksmithd\nSTRATEGY=fleetlock\nSTATE=running\n"
    );
}

#[test]
fn an_unreadable_update_conf_stops_locksmithd_with_the_files_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A directory where update.conf should be: unreadable even for root.
    std::fs::create_dir_all(root.join("etc/flatcar/update.conf")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_locksmithd"))
        .arg("--root")
        .arg(root)
        .env("LOCKSMITHD_REBOOT_STRATEGY", "reboot")
        .output()
        .expect("running locksmithd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "locksmithd started anyway: {stderr}");
    assert!(
        stderr.contains("reading update.conf") && stderr.contains("etc/flatcar/update.conf"),
        "the error names the file: {stderr}"
    );
}

#[test]
fn help_lists_the_settings_it_reads() {
    let out = Command::new(env!("CARGO_BIN_EXE_locksmithd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for key in [
        "REBOOT_STRATEGY",
        "ENDPOINT",
        "ETCD_CAFILE",
        "LOCKSMITHD_GROUP",
        "LEASE_TTL",
        "LOCK_RETRY",
        "FLEETLOCK_URL",
        "FLEETLOCK_CA_FILE",
        "REBOOT_WINDOW_START",
        "REBOOT_WINDOW_TIMEZONE",
        "REBOOT_DELAY",
        "BROADCAST",
        "BOOT_GOOD_COMMAND",
        "REBOOT_COMMAND",
        "REBOOT_METHOD",
        "KEXEC_LOAD_COMMAND",
        "METRICS_SOCKET",
    ] {
        assert!(help.contains(key), "--help does not explain {key}:\n{help}");
    }
}
