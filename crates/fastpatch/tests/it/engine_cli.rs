//! The real `fastpatch` binary as the engine daemon and as update_engine_client (by argv[0]
//! and as `fastpatch client`), on a private dbus-daemon; against the real update server (behind
//! a recording proxy): `-update` with a corrupt payload, and `kill -9` of the daemon in every
//! phase of an update.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use fastpatch_testsupport::{PrivateBus, UpdateServer, MACHINE, NEW};

const BIN: &str = env!("CARGO_BIN_EXE_fastpatch");
/// The daemon-only binary the OS image's unit runs (`fastpatch-engined run`).
const ENGINED: &str = env!("CARGO_BIN_EXE_fastpatch-engined");

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    let bus = PrivateBus::start();
    let address = bus.address.clone();
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
    // The daemon as shipped: fastpatch-engined, the unit's ExecStart (the kill -9 test
    // below runs the same code as `fastpatch engine run`).
    let daemon = Killed(
        Command::new(ENGINED)
            .args(["run", "--config"])
            .arg(&cfg)
            // No system CA certificates (a minimal OS): it still starts and serves D-Bus.
            .env("SSL_CERT_FILE", p.join("no-ca-bundle.pem"))
            .env("SSL_CERT_DIR", p.join("no-ca-dir"))
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

/// A machine for the daemon binary: a GPT image booted from A, a root directory pointed at
/// `server`, an engine TOML, and the daemon process when running.
struct BinMachine {
    dir: PathBuf,
    disk: PathBuf,
    root: PathBuf,
    config: PathBuf,
    bus: String,
    pub_pem: PathBuf,
    daemon: Option<Killed>,
}

impl BinMachine {
    fn new(dir: &Path, server: &UpdateServer, bus: &str) -> BinMachine {
        let disk = dir.join("disk.img");
        let spec = fastpatch_disk::LayoutSpec {
            total_size: 64 << 20,
            usr_size: 8 << 20,
            efi_size: 2 << 20,
            oem_size: 2 << 20,
            ..Default::default()
        };
        fastpatch_disk::create(&disk, &spec, false).unwrap();
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::create_dir_all(root.join("etc/flatcar")).unwrap();
        std::fs::write(root.join("etc/machine-id"), format!("{MACHINE}\n")).unwrap();
        std::fs::write(
            root.join("etc/flatcar/update.conf"),
            format!("GROUP=stable\nSERVER={}\n", server.omaha_url()),
        )
        .unwrap();
        let m = BinMachine {
            dir: dir.to_path_buf(),
            disk,
            root,
            config: dir.join("engine.toml"),
            bus: bus.to_string(),
            pub_pem: server.pub_pem.clone(),
            daemon: None,
        };
        m.boot("a", "1.0.0", 1);
        m
    }

    /// A boot: the running version and a new boot id (the slot goes into the config).
    fn boot(&self, _slot: &str, version: &str, n: u32) {
        std::fs::write(
            self.root.join("usr/lib/os-release"),
            format!("ID=flatcar\nVERSION={version}\n"),
        )
        .unwrap();
        std::fs::write(
            self.dir.join("boot_id"),
            format!("4f1c7d6e-0000-4000-8000-{n:012}\n"),
        )
        .unwrap();
    }

    /// Writes the engine config: the machine's paths plus `extra` TOML.
    fn configure(&self, slot: &str, extra: &str) {
        let p = |x: &Path| x.display().to_string();
        std::fs::write(
            &self.config,
            format!(
                "root = {root:?}\ndisk = {disk:?}\nbooted_slot = {slot:?}\nstate_file = {state:?}\n\
                 install_state_dir = {inst:?}\nboot_id_path = {bid:?}\ndbus_address = {bus:?}\n\
                 metrics_socket = {sock:?}\ntrusted_keys = [{key:?}]\n\
                 reboot_command = [\"true\"]\n{extra}\n",
                root = p(&self.root),
                disk = p(&self.disk),
                state = p(&self.state_file()),
                inst = p(&self.dir.join("install")),
                bid = p(&self.dir.join("boot_id")),
                bus = self.bus,
                sock = p(&self.dir.join("metrics.sock")),
                key = p(&self.pub_pem),
            ),
        )
        .unwrap();
    }

    fn state_file(&self) -> PathBuf {
        self.dir.join("engine.json")
    }

    fn state(&self) -> String {
        std::fs::read_to_string(self.state_file()).unwrap_or_default()
    }

    /// Starts the daemon and waits until it answers `-status`.
    fn start(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("metrics.sock"));
        self.daemon = Some(Killed(
            Command::new(BIN)
                .args(["engine", "run", "--config"])
                .arg(&self.config)
                .env("FASTPATCH_LOG", "info")
                .spawn()
                .unwrap(),
        ));
        self.wait_op(&[], Duration::from_secs(30));
    }

    /// SIGKILL: no destructor, no shutdown path runs.
    fn kill9(&mut self) {
        let mut d = self.daemon.take().expect("a running daemon");
        let pid = d.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success());
        let _ = d.0.wait();
    }

    fn client(&self, args: &[&str]) -> Output {
        client(Path::new(BIN), &[&["client"][..], args].concat(), &self.bus)
    }

    /// CURRENT_OP from `-status`, None while the daemon does not answer.
    fn op(&self) -> Option<String> {
        let out = self.client(&["-status"]);
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("CURRENT_OP=").map(str::to_string))
    }

    /// Polls `-status` until CURRENT_OP is one of `ops` (any answer if empty).
    fn wait_op(&self, ops: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(op) = self.op() {
                if ops.is_empty() || ops.contains(&op.as_str()) {
                    return op;
                }
            }
            assert!(Instant::now() < deadline, "no {ops:?} within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn next_boot(&self) -> u32 {
        let d = fastpatch_disk::Disk::open(&self.disk, fastpatch_disk::OpenMode::ReadOnly).unwrap();
        d.peek_next().expect("a bootable slot").index
    }

    /// The firmware's part of a reboot: choose the next slot and spend its try.
    fn firmware_choose(&self) -> u32 {
        let mut d =
            fastpatch_disk::Disk::open(&self.disk, fastpatch_disk::OpenMode::ReadWrite).unwrap();
        d.boot_next().unwrap().expect("a bootable slot").0.index
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Flatcar #388: every Omaha request carries an update check, a ping or events.
fn assert_no_empty_request(server: &UpdateServer) {
    let bodies = server.omaha_bodies();
    assert!(!bodies.is_empty());
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

fn event_names(
    rt: &tokio::runtime::Runtime,
    server: &UpdateServer,
    at_least: usize,
) -> Vec<String> {
    rt.block_on(server.wait_events(at_least))
        .iter()
        .map(|e| e.short())
        .collect()
}

#[test]
fn update_against_a_corrupt_payload_exits_nonzero_and_leaves_the_slot_unstaged() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start();
    let server = rt.block_on(UpdateServer::start(dir.path(), 6));
    server.tamper_payload();
    let mut m = BinMachine::new(dir.path(), &server, &bus.address);
    m.configure("a", "[download]\nretry_delay_secs = 1\n");
    m.start();

    let alias = dir.path().join("update_engine_client");
    std::os::unix::fs::symlink(BIN, &alias).unwrap();
    let out = client(&alias, &["-update"], &bus.address);
    assert!(
        !out.status.success(),
        "-update must fail: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(m.next_boot(), fastpatch_disk::USR_A_INDEX, "nothing staged");
    assert!(!m.state().contains("\"staged\": {"), "{}", m.state());
    let names = event_names(&rt, &server, 2);
    assert_eq!(names.first().map(String::as_str), Some("13/1"));
    assert_eq!(names.last().map(String::as_str), Some("3/0"), "{names:?}");
    assert_no_empty_request(&server);
}

/// kill -9 of the daemon binary while downloading, while verifying, after staging, and while
/// the 3/2 report is in flight: each restart resumes or restarts the attempt cleanly, nothing
/// half-verified is ever staged, no Omaha request is empty, and the server ends with one
/// clean history.
#[test]
fn kill_9_in_every_phase_resumes_or_restarts_cleanly() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start();
    let server = rt.block_on(UpdateServer::start(dir.path(), 6));
    let mut m = BinMachine::new(dir.path(), &server, &bus.address);
    let spacing =
        "[download]\nretry_delay_secs = 1\ncheckpoint_bytes = 262144\nhash_point_bytes = 262144\n";

    // 1. Mid-download (network limited to ~2 MiB/s).
    m.configure(
        "a",
        &format!("{spacing}[limits]\ndownload_bytes_per_sec = 2097152\n"),
    );
    m.start();
    assert!(m.client(&["-check_for_update"]).status.success());
    m.wait_op(&["UPDATE_STATUS_DOWNLOADING"], Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1200));
    m.kill9();
    assert_eq!(m.next_boot(), fastpatch_disk::USR_A_INDEX, "nothing staged");
    assert!(!m.state().contains("\"staged\": {"), "no stage intent");

    // 2. Mid-verification: the download is fast, the slot writes crawl (512 KiB/s), so the
    //    daemon sits in VERIFYING while the installer catches up.
    m.configure(
        "a",
        &format!("{spacing}[limits]\ndisk_bytes_per_sec = 524288\n"),
    );
    m.start();
    assert!(m.client(&["-check_for_update"]).status.success());
    m.wait_op(&["UPDATE_STATUS_VERIFYING"], Duration::from_secs(60));
    // The 14/1 report goes out on the reporter's own task, after the status change: wait for
    // the server to hold it, so the kill lands mid-verification with the report delivered.
    assert_eq!(event_names(&rt, &server, 3), ["13/1", "13/1", "14/1"]);
    assert_eq!(m.op().as_deref(), Some("UPDATE_STATUS_VERIFYING"));
    m.kill9();
    assert_eq!(m.next_boot(), fastpatch_disk::USR_A_INDEX, "nothing staged");
    assert!(!m.state().contains("\"staged\": {"), "no stage intent");
    let ranges = server.payload_ranges();
    assert!(
        ranges[1..].iter().all(|r| r.is_some_and(|from| from > 0)),
        "every restart resumed with a Range: {ranges:?}"
    );

    // 3. Finish, then kill once staged and reported.
    m.configure("a", spacing);
    m.start();
    let out = m.client(&["-update"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each attempt reported 13/1; the killed verification had sent 14/1 too.
    let expected = ["13/1", "13/1", "14/1", "13/1", "14/1", "3/1"];
    assert_eq!(event_names(&rt, &server, 6), expected);
    m.kill9();
    assert_eq!(m.next_boot(), fastpatch_disk::USR_B_INDEX, "B staged");
    let downloads = server.payload_ranges().len();
    // The restart finds the staged update: NEED_REBOOT at once, pings only, no new download.
    m.start();
    assert_eq!(m.op().as_deref(), Some("UPDATE_STATUS_UPDATED_NEED_REBOOT"));
    let before = server.omaha_bodies().len();
    assert!(m.client(&["-check_for_update"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.omaha_bodies().len() == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let ping = server.omaha_bodies().last().cloned().unwrap_or_default();
    assert!(
        ping.contains("<ping") && !ping.contains("<updatecheck") && !ping.contains("<event"),
        "only a ping while the update waits for its reboot: {ping}"
    );
    assert_eq!(
        server.payload_ranges().len(),
        downloads,
        "no second install"
    );
    m.kill9();

    // 4. Reboot into B; the 3/2 report is stuck in flight when the daemon is killed.
    assert_eq!(m.firmware_choose(), fastpatch_disk::USR_B_INDEX);
    m.boot("b", NEW, 2);
    m.configure("b", &format!("{spacing}[schedule]\nreport_delay = 0\n"));
    server.proxy.set_blackhole(true);
    m.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server
        .omaha_bodies()
        .iter()
        .any(|b| b.contains(r#"eventtype="3" eventresult="2""#))
    {
        assert!(Instant::now() < deadline, "the 3/2 report never left");
        std::thread::sleep(Duration::from_millis(20));
    }
    m.kill9();
    assert!(
        m.state().contains("\"pending_events\": [\n    {"),
        "the unacknowledged 3/2 survives: {}",
        m.state()
    );
    server.proxy.set_blackhole(false);
    m.start();
    let ev = rt.block_on(server.wait_events(7));
    let names: Vec<String> = ev.iter().map(|e| e.short()).collect();
    assert_eq!(names[..6], expected);
    assert_eq!(
        names[6..],
        ["3/2"],
        "the report arrives once, after the restart"
    );
    assert_eq!(ev[6].previous_version.as_deref(), Some("1.0.0"));
    assert_eq!(m.next_boot(), fastpatch_disk::USR_B_INDEX, "B marked good");
    assert_no_empty_request(&server);
}
