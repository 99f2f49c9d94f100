//! The daemon end to end, all real except the update server (a minimal Omaha + payload HTTP
//! server on 127.0.0.1 written here, until fastpatch-server lands): a GPT image from
//! `fastpatch_disk::create`, a signed payload from `fastpatch_payload::generate`, a private
//! dbus-daemon, AttemptUpdate over D-Bus.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fastpatch_boot_control::{BootControl, GptBootControl, Slot};
use fastpatch_engine::daemon::config::{BootedSlot, DaemonConfig};
use fastpatch_engine::daemon::Daemon;
use fastpatch_engine::dbus;
use futures_util::StreamExt;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct PrivateBus {
    child: Child,
    address: String,
}

impl PrivateBus {
    fn start() -> PrivateBus {
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("dbus-daemon must be installed (Debian package dbus)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read bus address");
        assert!(line.starts_with("unix:"), "bad address {line:?}");
        PrivateBus {
            child,
            address: line.trim().to_string(),
        }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MIB: u64 = 1 << 20;

/// What the test server saw and serves.
struct Served {
    payload: Vec<u8>,
    /// Bytes actually sent for the payload (differs from `payload` to simulate corruption).
    wire: Vec<u8>,
    sha256_b64: String,
    requests: Mutex<Vec<String>>,
}

async fn serve_http(listener: tokio::net::TcpListener, served: Arc<Served>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let served = served.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            let head_end = loop {
                let n = s.read(&mut tmp).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&tmp[..n]);
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let header = |name: &str| {
                head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
            };
            let len: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let n = s.read(&mut tmp).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
            let (status, ctype, extra, content): (&str, &str, String, Vec<u8>) = if head
                .starts_with("POST")
            {
                served.requests.lock().unwrap().push(body.clone());
                let update = if body.contains("<updatecheck") {
                    format!(
                        r#"<updatecheck status="ok"><urls><url codebase="http://{host}/pkg/"/></urls><manifest version="2"><packages><package name="update.gz" size="{size}" required="true"/></packages><actions><action event="postinstall" sha256="{sha}"/></actions></manifest></updatecheck>"#,
                        host = header("host").unwrap_or_default(),
                        size = served.payload.len(),
                        sha = served.sha256_b64
                    )
                } else {
                    String::new()
                };
                let xml = format!(
                    r#"<response protocol="3.0" server="test"><daystart elapsed_seconds="0"/><app appid="e96281a6-d1af-4bde-9a0a-97b76e56dc57" status="ok">{update}</app></response>"#
                );
                ("200 OK", "text/xml", String::new(), xml.into_bytes())
            } else {
                let from: usize = header("range")
                    .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
                    .unwrap_or(0);
                let total = served.wire.len();
                if from > 0 {
                    (
                        "206 Partial Content",
                        "application/octet-stream",
                        format!("Content-Range: bytes {from}-{}/{total}\r\n", total - 1),
                        served.wire[from..].to_vec(),
                    )
                } else {
                    (
                        "200 OK",
                        "application/octet-stream",
                        String::new(),
                        served.wire.clone(),
                    )
                }
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                content.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = s.write_all(&content).await;
            let _ = s.shutdown().await;
        });
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    disk: PathBuf,
    cfg: DaemonConfig,
    served: Arc<Served>,
}

async fn setup(bus: &PrivateBus, corrupt: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
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

    // A signed payload of a 6 MiB image.
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
    let payload_path = p.join("update.gz");
    fastpatch_payload::generate::generate(
        &image,
        &[key],
        &payload_path,
        &fastpatch_payload::generate::GenerateOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let payload = std::fs::read(&payload_path).unwrap();
    let mut wire = payload.clone();
    if corrupt {
        let mid = wire.len() / 2;
        wire[mid] ^= 0xff;
    }
    let served = Arc::new(Served {
        sha256_b64: fastpatch_omaha::encode_b64(&sha2::Sha256::digest(&payload)),
        payload,
        wire,
        requests: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_http(listener, served.clone()));

    let root = p.join("root");
    for d in ["usr/lib", "etc/flatcar"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("usr/lib/os-release"), "ID=flatcar\nVERSION=1\n").unwrap();
    std::fs::write(
        root.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/flatcar/update.conf"),
        format!("GROUP=stable\nSERVER=http://{addr}/v1/update/\n"),
    )
    .unwrap();
    std::fs::write(p.join("boot_id"), "4f1c7d6e-0000-4000-8000-000000000001\n").unwrap();
    let cfg = DaemonConfig {
        root,
        disk: Some(disk.clone()),
        booted_slot: BootedSlot::A,
        state_file: p.join("state/engine.json"),
        install_state_dir: p.join("state/install"),
        boot_id_path: p.join("boot_id"),
        trusted_keys: vec![pub_pem],
        dbus_address: Some(bus.address.clone()),
        metrics_socket: None,
        ..DaemonConfig::default()
    };
    Setup {
        _dir: dir,
        disk,
        cfg,
        served,
    }
}

/// AttemptUpdate, then the statuses until one of `until` (or 60 s).
async fn attempt(bus: &PrivateBus, until: &[&str]) -> Vec<String> {
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

fn events(served: &Served) -> Vec<String> {
    served
        .requests
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.split("<event ")
                .skip(1)
                .map(|e| {
                    let attr = |n: &str| {
                        e.split(&format!("{n}=\""))
                            .nth(1)
                            .and_then(|v| v.split('"').next())
                            .unwrap_or("")
                            .to_string()
                    };
                    format!("{}/{}", attr("eventtype"), attr("eventresult"))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn next_boot(disk: &Path) -> u32 {
    let d = fastpatch_disk::Disk::open(disk, fastpatch_disk::OpenMode::ReadOnly).unwrap();
    d.peek_next().expect("a bootable slot").index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_download_verify_stage_then_b_boots_next() {
    let bus = PrivateBus::start();
    let s = setup(&bus, false).await;
    let daemon = Daemon::new(s.cfg.clone()).await.expect("daemon starts");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(daemon.run(async {
        let _ = stop_rx.await;
    }));
    let seen = attempt(
        &bus,
        &[
            "UPDATE_STATUS_UPDATED_NEED_REBOOT",
            "UPDATE_STATUS_REPORTING_ERROR_EVENT",
        ],
    )
    .await;
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
            "2",
            s.served.payload.len() as i64
        )
    );
    // The events reach the server in order (the reporter is sequential; give it a moment).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while events(&s.served).len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(events(&s.served), ["13/1", "14/1", "3/1"]);
    let first = s.served.requests.lock().unwrap()[0].clone();
    for want in [
        r#"installsource="ondemandupdate""#,
        r#"version="1""#,
        r#"track="stable""#,
        r#"machineid="0123456789abcdef0123456789abcdef""#,
        r#"bootid="{4f1c7d6e-0000-4000-8000-000000000001}""#,
        "<ping",
        "<updatecheck",
    ] {
        assert!(first.contains(want), "{want} missing from {first}");
    }
    assert_eq!(
        next_boot(&s.disk),
        fastpatch_disk::USR_B_INDEX,
        "B is staged"
    );
    let state = std::fs::read_to_string(&s.cfg.state_file).unwrap();
    assert!(state.contains("\"gpt_staged\": true"), "{state}");
    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_payload_fails_and_leaves_the_slot_unstaged() {
    let bus = PrivateBus::start();
    let s = setup(&bus, true).await;
    let daemon = Daemon::new(s.cfg.clone()).await.expect("daemon starts");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(daemon.run(async {
        let _ = stop_rx.await;
    }));
    let seen = attempt(
        &bus,
        &[
            "UPDATE_STATUS_UPDATED_NEED_REBOOT",
            "UPDATE_STATUS_REPORTING_ERROR_EVENT",
        ],
    )
    .await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("UPDATE_STATUS_REPORTING_ERROR_EVENT"),
        "{seen:?}"
    );
    assert_eq!(
        next_boot(&s.disk),
        fastpatch_disk::USR_A_INDEX,
        "nothing staged"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !events(&s.served).contains(&"3/0".to_string()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ev = events(&s.served);
    assert_eq!(ev.first().map(String::as_str), Some("13/1"), "{ev:?}");
    assert_eq!(ev.last().map(String::as_str), Some("3/0"), "{ev:?}");
    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
}

async fn run_until_stopped(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_gate_reboots_falls_back_and_reports_44() {
    let bus = PrivateBus::start();
    let s = setup(&bus, false).await;
    let (stop, run) = run_until_stopped(s.cfg.clone()).await;
    let seen = attempt(
        &bus,
        &[
            "UPDATE_STATUS_UPDATED_NEED_REBOOT",
            "UPDATE_STATUS_REPORTING_ERROR_EVENT",
        ],
    )
    .await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("UPDATE_STATUS_UPDATED_NEED_REBOOT")
    );
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();

    // "Reboot": the chooser spends B's one try; the new version boots with a failing check.
    {
        let mut d =
            fastpatch_disk::Disk::open(&s.disk, fastpatch_disk::OpenMode::ReadWrite).unwrap();
        let (p, _) = d.boot_next().unwrap().unwrap();
        assert_eq!(p.index, fastpatch_disk::USR_B_INDEX);
    }
    let marker = s.cfg.state_file.with_file_name("rebooted");
    let mut cfg = s.cfg.clone();
    cfg.booted_slot = BootedSlot::B;
    std::fs::write(cfg.root.join("usr/lib/os-release"), "VERSION=2\n").unwrap();
    std::fs::write(&cfg.boot_id_path, "4f1c7d6e-0000-4000-8000-000000000002\n").unwrap();
    cfg.health.commands = vec![vec!["false".into()]];
    cfg.health.timeout_secs = 1;
    cfg.health.interval_secs = 1;
    cfg.reboot_command = vec!["touch".into(), marker.display().to_string()];
    let (stop, run) = run_until_stopped(cfg.clone()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !marker.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(marker.exists(), "the reboot command ran");
    let b = GptBootControl::new(&s.disk, Slot::B)
        .slot_state(Slot::B)
        .unwrap();
    assert!(!b.attrs.successful, "B was not marked good");
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert_eq!(
        next_boot(&s.disk),
        fastpatch_disk::USR_A_INDEX,
        "the chooser falls back to A"
    );

    // Back on A, version 1: the next check carries the rollback report.
    let mut cfg = s.cfg.clone();
    std::fs::write(cfg.root.join("usr/lib/os-release"), "VERSION=1\n").unwrap();
    std::fs::write(&cfg.boot_id_path, "4f1c7d6e-0000-4000-8000-000000000003\n").unwrap();
    cfg.booted_slot = BootedSlot::A;
    let before = s.served.requests.lock().unwrap().len();
    let (stop, run) = run_until_stopped(cfg).await;
    attempt(
        &bus,
        &[
            "UPDATE_STATUS_UPDATE_AVAILABLE",
            "UPDATE_STATUS_IDLE",
            "UPDATE_STATUS_REPORTING_ERROR_EVENT",
        ],
    )
    .await;
    let check = s.served.requests.lock().unwrap()[before].clone();
    assert!(
        check.contains("<updatecheck") && check.contains(r#"errorcode="44""#),
        "{check}"
    );
    assert!(
        check.contains(r#"eventtype="3" eventresult="0""#),
        "{check}"
    );
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_stopped_mid_download_restarts_the_attempt_cleanly() {
    let bus = PrivateBus::start();
    let mut s = setup(&bus, false).await;
    s.cfg.limits.download_bytes_per_sec = Some(2 << 20); // ~3 s for the payload
    let daemon = Daemon::new(s.cfg.clone()).await.expect("daemon starts");
    let run = tokio::spawn(daemon.run(std::future::pending()));
    attempt(&bus, &["UPDATE_STATUS_DOWNLOADING"]).await;
    run.abort(); // the daemon dies between actions, mid-download
    let _ = run.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        next_boot(&s.disk),
        fastpatch_disk::USR_A_INDEX,
        "nothing staged"
    );
    let state = std::fs::read_to_string(&s.cfg.state_file).unwrap_or_default();
    assert!(!state.contains("\"staged\": {"), "no stage intent: {state}");

    s.cfg.limits.download_bytes_per_sec = None;
    let (stop, run) = run_until_stopped(s.cfg.clone()).await;
    let seen = attempt(
        &bus,
        &[
            "UPDATE_STATUS_UPDATED_NEED_REBOOT",
            "UPDATE_STATUS_REPORTING_ERROR_EVENT",
        ],
    )
    .await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("UPDATE_STATUS_UPDATED_NEED_REBOOT"),
        "{seen:?}"
    );
    assert_eq!(next_boot(&s.disk), fastpatch_disk::USR_B_INDEX);
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}
