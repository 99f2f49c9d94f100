//! The real `fastpatch` binary as the engine daemon and as update_engine_client (by argv[0]
//! and as `fastpatch client`), on a private dbus-daemon.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fastpatch");

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn private_bus() -> (Killed, String) {
    let mut child = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("dbus-daemon must be installed (Debian package dbus)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("unix:"), "{line:?}");
    (Killed(child), line.trim().to_string())
}

fn client(exe: &Path, args: &[&str], bus: &str) -> Output {
    Command::new(exe)
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .output()
        .unwrap()
}

#[test]
fn daemon_binary_serves_update_engine_client_status_byte_for_byte() {
    let (_bus, address) = private_bus();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let disk = p.join("disk.img");
    let spec = fastpatch_disk::LayoutSpec {
        total_size: 64 << 20,
        usr_size: 8 << 20,
        efi_size: 2 << 20,
        oem_size: 2 << 20,
        ..Default::default()
    };
    fastpatch_disk::create(&disk, &spec, false).unwrap();
    let root = p.join("root");
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    std::fs::create_dir_all(root.join("etc/flatcar")).unwrap();
    std::fs::write(root.join("usr/lib/os-release"), "VERSION=1\n").unwrap();
    std::fs::write(
        root.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/flatcar/update.conf"), "SERVER=disabled\n").unwrap();
    std::fs::write(p.join("boot_id"), "b1\n").unwrap();
    let cfg = p.join("engine.toml");
    std::fs::write(
        &cfg,
        format!(
            "root = {root:?}\ndisk = {disk:?}\nbooted_slot = \"a\"\nstate_file = {state:?}\ninstall_state_dir = {inst:?}\nboot_id_path = {bid:?}\ndbus_address = {address:?}\nmetrics_socket = {sock:?}\n",
            root = root.display().to_string(),
            disk = disk.display().to_string(),
            state = p.join("engine.json").display().to_string(),
            inst = p.join("install").display().to_string(),
            bid = p.join("boot_id").display().to_string(),
            sock = p.join("metrics.sock").display().to_string(),
        ),
    )
    .unwrap();
    let daemon = Killed(
        Command::new(BIN)
            .args(["engine", "run", "--config"])
            .arg(&cfg)
            .spawn()
            .unwrap(),
    );

    let alias = p.join("update_engine_client");
    std::os::unix::fs::symlink(BIN, &alias).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = client(&alias, &["-status"], &address);
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "LAST_CHECKED_TIME=0\nPROGRESS=0.000000\nCURRENT_OP=UPDATE_STATUS_IDLE\nNEW_VERSION=0.0.0.0\nNEW_SIZE=0\n"
    );
    let same = client(Path::new(BIN), &["client", "-status"], &address);
    assert!(same.status.success());
    let json = client(Path::new(BIN), &["status", "--json"], &address);
    let text = String::from_utf8(json.stdout).unwrap();
    assert!(text.contains("\"current_operation\": \"Idle\""), "{text}");
    // SERVER=disabled: -update sees the check end at once without an update.
    let upd = client(&alias, &["-update"], &address);
    assert!(
        upd.status.success(),
        "{}",
        String::from_utf8_lossy(&upd.stderr)
    );
    assert!(String::from_utf8_lossy(&upd.stdout).contains("No update available"));
    let bad = client(&alias, &["-bogus"], &address);
    assert_eq!(bad.status.code(), Some(2));
    // The boot was marked good by the gate (no checks configured): A successful.
    let d = fastpatch_disk::Disk::open(&disk, fastpatch_disk::OpenMode::ReadOnly).unwrap();
    assert!(
        d.partition(fastpatch_disk::USR_A_INDEX)
            .unwrap()
            .attrs
            .successful
    );
    // SIGTERM stops it cleanly.
    let pid = daemon.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut daemon = daemon;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
