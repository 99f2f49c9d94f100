//! System extensions updated with the OS, all real: fastpatch-server on loopback offers the
//! new version with extension payloads after it (as Nebraska lists Flatcar's), the daemon
//! places the machine's enabled ones before it stages the slot, links the booted version's at
//! start, prunes old ones after a good boot, and fails the update with its own error code
//! (1001) when an enabled one cannot be placed.

use crate::support;

use std::path::{Path, PathBuf};

use fastpatch_engine::daemon::config::BootedSlot;
use fastpatch_engine::daemon::extensions::{LINK_DIR, OEM_SYSEXT_DIR, SYSEXT_DIR};
use fastpatch_engine::daemon::Daemon;
use support::*;

fn image(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// `image` as a payload signed by `key`, written as `dir/name`.
fn signed(dir: &Path, name: &str, image: &[u8], key: &rsa::RsaPrivateKey) -> PathBuf {
    let src = dir.join(format!("{name}.img"));
    std::fs::write(&src, image).unwrap();
    let out = dir.join("files").join(name);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    fastpatch_payload::generate::generate(
        &src,
        std::slice::from_ref(key),
        &out,
        &fastpatch_payload::generate::GenerateOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    out
}

struct Release {
    server: UpdateServer,
    demo: Vec<u8>,
    oem: Vec<u8>,
}

/// The server with [`NEW`] (signed by a new key) and extension payloads after it: `demo` and
/// `oem` signed by `ext_key` (the release key when `None`), and one nobody enabled.
async fn release(dir: &Path, ext_key: Option<&rsa::RsaPrivateKey>) -> Release {
    let key = fastpatch_payload::keys::generate_key().unwrap();
    let pub_pem = dir.join("key.pub.pem");
    std::fs::write(
        &pub_pem,
        fastpatch_payload::keys::public_key_pem(&key.to_public_key()).unwrap(),
    )
    .unwrap();
    let os = signed(dir, "update.gz", &image(1, 3 << 20), &key);
    let ext_key = ext_key.unwrap_or(&key);
    let (demo, oem) = (image(2, 300_000), image(3, 100_000));
    let files = [
        signed(dir, "flatcar-demo.gz", &demo, ext_key),
        signed(dir, "oem-qemu.gz", &oem, ext_key),
        signed(dir, "flatcar-other.gz", &image(4, 50_000), ext_key),
    ];
    let server = UpdateServer::start_with_files(dir, &os, pub_pem, &files).await;
    Release { server, demo, oem }
}

/// `demo` enabled by the vendor, the OEM id `qemu`, an /oem partition; 1.0.0's images in
/// place and an older 0.9.0 one.
fn enable(root: &Path) {
    std::fs::create_dir_all(root.join("usr/share/flatcar")).unwrap();
    std::fs::write(root.join("usr/share/flatcar/enabled-sysext.conf"), "demo\n").unwrap();
    std::fs::create_dir_all(root.join("usr/share/oem")).unwrap();
    std::fs::write(root.join("usr/share/oem/oem-release"), "ID=qemu\n").unwrap();
    std::fs::create_dir_all(root.join(SYSEXT_DIR)).unwrap();
    std::fs::create_dir_all(root.join(OEM_SYSEXT_DIR)).unwrap();
    for (dir, name, data) in [
        (SYSEXT_DIR, "flatcar-demo-1.0.0.raw", "demo 1"),
        (SYSEXT_DIR, "flatcar-demo-0.9.0.raw", "demo 0.9"),
        (OEM_SYSEXT_DIR, "oem-qemu-1.0.0.raw", "oem 1"),
    ] {
        std::fs::write(root.join(dir).join(name), data).unwrap();
    }
}

fn link(root: &Path, stem: &str) -> Option<PathBuf> {
    std::fs::read_link(root.join(LINK_DIR).join(format!("{stem}.raw"))).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabled_extensions_come_with_the_update_and_follow_the_booted_version() {
    let dir = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start();
    let r = release(dir.path(), None).await;
    let mut m = TestMachine::new(dir.path(), &r.server, Some(&bus.address));
    let root = m.cfg.root.clone();
    enable(&root);

    let (stop, run) = run_until_stopped(m.cfg.clone()).await;
    // At start, the booted version's images are linked.
    assert_eq!(
        link(&root, "flatcar-demo").as_deref(),
        Some(Path::new("/etc/flatcar/sysext/flatcar-demo-1.0.0.raw"))
    );
    assert_eq!(
        link(&root, "oem-qemu").as_deref(),
        Some(Path::new("/oem/sysext/oem-qemu-1.0.0.raw"))
    );
    let seen = attempt(&bus, ENDED).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("UPDATE_STATUS_UPDATED_NEED_REBOOT"),
        "{seen:?}"
    );
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    let placed = |d: &str, n: &str| std::fs::read(root.join(d).join(n)).ok();
    assert!(placed(SYSEXT_DIR, "flatcar-demo-2.0.0.raw") == Some(r.demo.clone()));
    assert!(placed(OEM_SYSEXT_DIR, "oem-qemu-2.0.0.raw") == Some(r.oem.clone()));
    assert_eq!(placed(SYSEXT_DIR, "flatcar-other-2.0.0.raw"), None);
    let gets: Vec<String> = r
        .server
        .proxy
        .requests()
        .into_iter()
        .filter(|q| q.method == "GET")
        .map(|q| q.path)
        .collect();
    assert!(
        !gets.iter().any(|p| p.ends_with("flatcar-other.gz")),
        "an extension nobody enabled is not downloaded: {gets:?}"
    );
    assert!(
        gets.iter().any(|p| p.ends_with("flatcar-demo.gz")),
        "{gets:?}"
    );
    assert!(
        std::fs::read_dir(root.join(SYSEXT_DIR).join(".fastpatch-downloads"))
            .unwrap()
            .next()
            .is_none(),
        "downloads are removed once unpacked"
    );
    // Still on 1.0.0 until the reboot.
    assert_eq!(
        link(&root, "flatcar-demo").as_deref(),
        Some(Path::new("/etc/flatcar/sysext/flatcar-demo-1.0.0.raw"))
    );

    // Reboot into B: 2.0.0's images are linked, and once it is good the older ones go
    // (1.0.0, the fallback's, stays).
    assert_eq!(m.firmware_choose(), fastpatch_disk::USR_B_INDEX);
    m.boot(BootedSlot::B, NEW, 2);
    let (stop, run) = run_until_stopped(m.cfg.clone()).await;
    assert_eq!(
        link(&root, "flatcar-demo").as_deref(),
        Some(Path::new("/etc/flatcar/sysext/flatcar-demo-2.0.0.raw"))
    );
    assert_eq!(
        link(&root, "oem-qemu").as_deref(),
        Some(Path::new("/oem/sysext/oem-qemu-2.0.0.raw"))
    );
    attempt(
        &bus,
        &["UPDATE_STATUS_IDLE", "UPDATE_STATUS_REPORTING_ERROR_EVENT"],
    )
    .await;
    let ev = r.server.wait_events(4).await;
    assert_eq!(ev[3].short(), "3/2");
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert!(
        placed(SYSEXT_DIR, "flatcar-demo-0.9.0.raw").is_none(),
        "pruned"
    );
    assert!(
        placed(SYSEXT_DIR, "flatcar-demo-1.0.0.raw").is_some(),
        "the fallback's stays"
    );
    assert!(placed(SYSEXT_DIR, "flatcar-demo-2.0.0.raw").is_some());

    // Back on A (a rollback): 1.0.0's images again.
    m.boot(BootedSlot::A, OLD, 3);
    drop(Daemon::new(m.cfg.clone()).await.unwrap());
    assert_eq!(
        link(&root, "flatcar-demo").as_deref(),
        Some(Path::new("/etc/flatcar/sysext/flatcar-demo-1.0.0.raw"))
    );
}

/// A failed attempt: the error event's code, nothing staged, no image of the new version.
async fn expect_extension_error(r: &Release, m: &TestMachine, bus: &PrivateBus) {
    let (stop, run) = run_until_stopped(m.cfg.clone()).await;
    let seen = attempt(bus, ENDED).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("UPDATE_STATUS_REPORTING_ERROR_EVENT"),
        "{seen:?}"
    );
    let ev = r.server.wait_events(3).await;
    let last = ev.last().unwrap();
    let base = last
        .error_code
        .map(|c| c as u32 & !fastpatch_omaha::error_code::FLAGS_MASK);
    assert_eq!((last.short(), base), ("3/0".into(), Some(1001)), "{ev:?}");
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert_eq!(m.next_boot(), fastpatch_disk::USR_A_INDEX, "nothing staged");
    assert!(!m.state().contains("\"staged\": {"), "{}", m.state());
    let root = &m.cfg.root;
    for d in [SYSEXT_DIR, OEM_SYSEXT_DIR] {
        let names: Vec<String> = std::fs::read_dir(root.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| n.contains("2.0.0") || n.ends_with(".tmp")),
            "no image of the new version, no half-written one: {names:?}"
        );
    }
    assert_eq!(
        link(root, "flatcar-demo").as_deref(),
        Some(Path::new("/etc/flatcar/sysext/flatcar-demo-1.0.0.raw")),
        "the running system is as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_signed_by_an_untrusted_key_fails_the_update_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start();
    let other = fastpatch_payload::keys::generate_key().unwrap();
    let r = release(dir.path(), Some(&other)).await;
    let m = TestMachine::new(dir.path(), &r.server, Some(&bus.address));
    enable(&m.cfg.root);
    expect_extension_error(&r, &m, &bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enabled_extension_the_update_does_not_offer_fails_it_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start();
    let r = release(dir.path(), None).await;
    let m = TestMachine::new(dir.path(), &r.server, Some(&bus.address));
    enable(&m.cfg.root);
    std::fs::write(
        m.cfg.root.join("etc/flatcar/enabled-sysext.conf"),
        "python\n",
    )
    .unwrap();
    expect_extension_error(&r, &m, &bus).await;
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oem_image_that_does_not_fit_on_oem_goes_under_etc() {
    let dir = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start();
    let r = release(dir.path(), None).await;
    let mut m = TestMachine::new(dir.path(), &r.server, Some(&bus.address));
    let root = m.cfg.root.clone();
    let oem = root.join("oem");
    std::fs::create_dir_all(&oem).unwrap();
    // A small OEM partition: the 1.0.0 image fits, the 100 kB one of 2.0.0 does not.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48k", "tmpfs"])
        .arg(&oem)
        .status()
        .expect("running mount");
    assert!(
        mounted.success(),
        "mounting a tmpfs needs root (the test suite runs as root)"
    );
    let _umount = Mounted(oem.clone());
    enable(&root);

    let (stop, run) = run_until_stopped(m.cfg.clone()).await;
    let seen = attempt(&bus, ENDED).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("UPDATE_STATUS_UPDATED_NEED_REBOOT"),
        "{seen:?}"
    );
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    let fallback = root.join("etc/flatcar/oem-sysext/oem-qemu-2.0.0.raw");
    assert!(
        std::fs::read(&fallback).ok() == Some(r.oem.clone()),
        "the OEM image is under /etc"
    );
    let left: Vec<String> = walk(&oem);
    assert_eq!(
        left,
        ["sysext/oem-qemu-1.0.0.raw"],
        "nothing of 2.0.0 is left on /oem"
    );
    assert!(
        std::fs::read(root.join(SYSEXT_DIR).join("flatcar-demo-2.0.0.raw")).ok() == Some(r.demo)
    );

    // Booted into 2.0.0, its OEM image is linked from there.
    assert_eq!(m.firmware_choose(), fastpatch_disk::USR_B_INDEX);
    m.boot(BootedSlot::B, NEW, 2);
    drop(Daemon::new(m.cfg.clone()).await.unwrap());
    assert_eq!(
        link(&root, "oem-qemu").as_deref(),
        Some(Path::new("/etc/flatcar/oem-sysext/oem-qemu-2.0.0.raw"))
    );
}

/// Every file under `dir`, relative, sorted.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}
