//! `fastpatch boot kexec` refusing as a user would meet it, on a disk image: nothing on the
//! disk changes when there is nothing to load. (Loading and the kexec itself run in QEMU: the
//! fleet test's kexec machine.)

use std::path::Path;
use std::process::Command;

const FASTPATCH: &str = env!("CARGO_BIN_EXE_fastpatch");

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(FASTPATCH)
        .args(args)
        .env("FASTPATCH_LOG", "warn")
        .output()
        .expect("run fastpatch");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) {
    let (ok, err) = run(args);
    assert!(ok, "fastpatch {args:?} failed: {err}");
}

/// A Flatcar-layout image with USR-B staged (tries 1, priority above A) and a key pair.
fn staged_disk(dir: &Path) -> (String, String) {
    let img = crate::cgpt_cli::create(dir).to_string_lossy().into_owned();
    ok(&["cgpt", "add", "-i", "4", "-S0", "-T1", &img]);
    ok(&["cgpt", "prioritize", "-i", "4", &img]);
    let key = dir.join("release.pem").to_string_lossy().into_owned();
    let public = dir.join("release.pub.pem").to_string_lossy().into_owned();
    ok(&["keygen", "-o", &key, "--public", &public]);
    (img, public)
}

#[test]
fn a_slot_without_a_valid_seal_is_not_loaded_and_keeps_its_try() {
    let dir = tempfile::tempdir().unwrap();
    let (img, public) = staged_disk(dir.path());
    // The partition device as the kernel names it for this disk (`disk.img4`): USR-B holds
    // no seal, as after an install that never finished.
    std::fs::write(format!("{img}4"), vec![0u8; 8 << 20]).unwrap();
    let before = std::fs::read(&img).unwrap();
    let (ok, err) = run(&["boot", "kexec", "--disk", &img, "--key", &public]);
    assert!(!ok, "loaded a slot without a seal: {err}");
    assert!(
        err.contains("USR-B is not loaded: its seal does not verify"),
        "{err}"
    );
    assert!(
        std::fs::read(&img).unwrap() == before,
        "the disk changed (the try was spent) although nothing was loaded"
    );
}

#[test]
fn no_bootable_slot_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (img, public) = staged_disk(dir.path());
    ok(&["cgpt", "add", "-i", "3", "-P0", &img]);
    ok(&["cgpt", "add", "-i", "4", "-P0", &img]);
    let (ok, err) = run(&["boot", "kexec", "--disk", &img, "--key", &public]);
    assert!(!ok);
    assert!(err.contains("no bootable USR slot on"), "{err}");
}
