//! `fastpatch cgpt` and `fastpatch disk create` as a user runs them, checked against sgdisk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FASTPATCH: &str = env!("CARGO_BIN_EXE_fastpatch");

fn fastpatch(args: &[&str]) -> Output {
    Command::new(FASTPATCH)
        .args(args)
        .env("FASTPATCH_LOG", "warn")
        .output()
        .expect("run fastpatch")
}

fn ok(args: &[&str]) -> String {
    let out = fastpatch(args);
    assert!(
        out.status.success(),
        "fastpatch {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail: exit 1, one line on stderr containing `needle`.
fn fails(args: &[&str], needle: &str) {
    let out = fastpatch(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "fastpatch {args:?} should fail, stderr: {err}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "fastpatch {args:?}: want a one-line error, got:\n{err}"
    );
    assert!(
        err.contains(needle),
        "fastpatch {args:?}: {err:?} lacks {needle:?}"
    );
}

/// A 64 MiB image with Flatcar's layout (8 MiB USR slots), as `fastpatch disk create` makes it.
pub(crate) fn create(dir: &Path) -> PathBuf {
    let img = dir.join("disk.img");
    let s = img.to_str().unwrap();
    ok(&[
        "disk",
        "create",
        s,
        "--size",
        "64M",
        "--usr-size",
        "8M",
        "--efi-size",
        "2M",
        "--oem-size",
        "2M",
    ]);
    img
}

fn sgdisk(args: &[&str]) -> String {
    let out = Command::new("sgdisk")
        .args(args)
        .output()
        .expect("sgdisk (Debian package gdisk) must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_sgdisk_clean(img: &str) {
    let text = sgdisk(&["-v", img]);
    assert!(text.contains("No problems found"), "sgdisk -v: {text}");
}

#[test]
fn flatcar_update_flow_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let img = create(dir.path());
    let s = img.to_str().unwrap();
    assert_sgdisk_clean(s);
    assert_eq!(ok(&["cgpt", "show", "-i", "3", "-S", s]).trim(), "1");
    assert_eq!(ok(&["cgpt", "show", "-i", "3", "-P", s]).trim(), "1");
    assert_eq!(
        ok(&["cgpt", "find", "-t", "flatcar-usr", s]),
        format!("{s}3\n{s}4\n")
    );

    // What Flatcar's postinstall does, in cgpt words.
    ok(&["cgpt", "add", "-i", "4", "-S0", "-T1", s]);
    ok(&["cgpt", "prioritize", "-i", "4", s]);
    assert_sgdisk_clean(s);
    assert!(sgdisk(&["-i", "4", s]).contains("Attribute flags: 0012000000000000"));
    let show = ok(&["cgpt", "show", "-i", "4", s]);
    assert!(
        show.contains("Attr: priority=2 tries=1 successful=0"),
        "{show}"
    );

    let b = "e03dd35c-7c2d-4a47-b3fe-27f15780a57c";
    let a = "7130c94a-213a-4e5a-8e26-6cce9662f132";
    assert_eq!(ok(&["cgpt", "next", s]).trim(), b);
    assert_eq!(
        ok(&["cgpt", "next", s]).trim(),
        a,
        "B never marked good: rollback to A"
    );
    assert_sgdisk_clean(s);

    // Mark good the way Flatcar does after a good boot.
    ok(&["cgpt", "add", "-i", "4", "-S1", "-T0", s]);
    ok(&["cgpt", "prioritize", "-i", "4", s]);
    assert_eq!(ok(&["cgpt", "next", s]).trim(), b);
    assert_eq!(ok(&["cgpt", "next", s]).trim(), b);
    let table = ok(&["cgpt", "show", s]);
    assert!(
        table.contains("Label: \"USR-B\"")
            && table.contains("Attr: priority=2 tries=0 successful=1"),
        "{table}"
    );
}

#[test]
fn repair_rebuilds_a_corrupt_primary() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let img = create(dir.path());
    let s = img.to_str().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(b"garbage!", 512).unwrap();
    drop(f);
    let out = fastpatch(&["cgpt", "show", "-i", "4", "-P", s]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("primary GPT is corrupt (no GPT signature)")
    );
    let said = ok(&["cgpt", "repair", s]);
    assert!(said.contains("repaired: primary GPT is corrupt"), "{said}");
    assert_sgdisk_clean(s);
    assert!(ok(&["cgpt", "repair", s]).contains("nothing to repair"));
}

#[test]
fn bad_input_is_a_one_line_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = create(dir.path());
    let s = img.to_str().unwrap().to_string();

    let zeros = dir.path().join("zeros.img");
    std::fs::write(&zeros, vec![0u8; 4 << 20]).unwrap();
    let z = zeros.to_str().unwrap().to_string();

    let truncated = dir.path().join("truncated.img");
    std::fs::write(&truncated, &std::fs::read(&img).unwrap()[..10 << 20]).unwrap();
    let t = truncated.to_str().unwrap().to_string();

    let readonly = dir.path().join("readonly.img");
    std::fs::copy(&img, &readonly).unwrap();
    let mut perm = std::fs::metadata(&readonly).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o444);
    std::fs::set_permissions(&readonly, perm).unwrap();
    let r = readonly.to_str().unwrap().to_string();

    let small = format!("{s}.small");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["cgpt", "show", &z], "has no valid GPT"),
        (
            vec!["cgpt", "add", "-i", "4", "-P", "1", &z],
            "has no valid GPT",
        ),
        (vec!["cgpt", "next", &z], "has no valid GPT"),
        (vec!["cgpt", "show", &t], "truncated?"),
        (vec!["cgpt", "add", "-i", "4", "-S1", &t], "truncated?"),
        (
            vec!["cgpt", "add", "-i", "200", "-P", "1", &s],
            "partition 200 does not exist (valid partition numbers: 1 to 128)",
        ),
        (
            vec!["cgpt", "add", "-i", "0", "-P", "1", &s],
            "partition 0 does not exist",
        ),
        (
            vec!["cgpt", "add", "-i", "5", "-P", "1", &s],
            "partition 5 is unused",
        ),
        (
            vec!["cgpt", "prioritize", "-i", "1", &s],
            "partition 1 is not a USR partition",
        ),
        (
            vec!["cgpt", "prioritize", "-i", "9", &s],
            "partition 9 is not a USR partition",
        ),
        (vec!["cgpt", "add", "-i", "4", "-S1", &r], "is read-only"),
        (vec!["cgpt", "prioritize", "-i", "4", &r], "is read-only"),
        (vec!["cgpt", "next", &r], "is read-only"),
        (vec!["cgpt", "add", "-i", "4", &s], "nothing to change"),
        (
            vec!["cgpt", "show", "/nonexistent/disk.img"],
            "cannot open /nonexistent/disk.img",
        ),
        (vec!["disk", "create", &s], "File exists"),
        (
            vec!["disk", "create", &small, "--size", "10M"],
            "too small for this layout",
        ),
    ];
    let files = [&img, &zeros, &truncated, &readonly];
    for (args, needle) in cases {
        let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        fails(&args, needle);
        for (f, b) in files.iter().zip(&before) {
            assert!(
                std::fs::read(f).unwrap() == *b,
                "{args:?} changed {}",
                f.display()
            );
        }
    }
    assert!(
        !Path::new(&small).exists(),
        "a refused create leaves no file behind"
    );
}
