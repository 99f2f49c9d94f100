//! `fastpatch image`: the real binary's one-line refusals and its verify command. (The builder's
//! outputs are checked in fastpatch-image's own tests.)

use std::os::unix::fs::symlink;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fastpatch");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("running fastpatch");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_tree_without_merged_usr_is_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("rootfs");
    std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    symlink("usr/lib", tree.join("lib")).unwrap();
    let key = dir.path().join("release.pem");
    let (ok, _, _) = run(&[
        "keygen",
        "--output",
        key.to_str().unwrap(),
        "--public",
        dir.path().join("release.pub.pem").to_str().unwrap(),
    ]);
    assert!(ok);
    let out = dir.path().join("out");
    let (ok, stdout, stderr) = run(&[
        "image",
        "build",
        tree.to_str().unwrap(),
        "--version",
        "1.0.0",
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "{stdout}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("image: "))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error: cannot build release 1.0.0: ")
            && lines[0].contains("/bin is a directory, not a link to usr/bin"),
        "{stderr}"
    );
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");

    // Without a key: refused before anything is read.
    let (ok, _, stderr) = run(&[
        "image",
        "build",
        tree.to_str().unwrap(),
        "--version",
        "1.0.0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("no signing key"), "{stderr}");
}

#[test]
fn verify_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let public = dir.path().join("k.pub.pem");
    assert!(
        run(&[
            "keygen",
            "--output",
            key.to_str().unwrap(),
            "--public",
            public.to_str().unwrap()
        ])
        .0
    );
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![0u8; 8192]).unwrap();
    let (ok, _, stderr) = run(&[
        "image",
        "verify",
        junk.to_str().unwrap(),
        "--key",
        public.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("does not verify")
            && stderr.contains("does not start with an ext4 file system"),
        "{stderr}"
    );
}
