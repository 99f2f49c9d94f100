//! The fastpatch binary as locksmithctl and locksmithd: under those names (links, as an OS
//! image installs them) and as subcommands, against a real etcd.

use std::process::Command;

use fastpatch_locksmith::testsupport::EtcdServer;

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn linked_as_locksmithctl_or_as_a_subcommand_it_is_locksmithctl() {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("locksmithctl");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_fastpatch"), &link).unwrap();

    let o = Command::new(&link)
        .args(["--endpoint", &ep, "set-max", "2"])
        .output()
        .unwrap();
    assert_eq!(text(&o), ("Old-Max: 1\nMax: 2\n".into(), String::new()));
    let o = Command::new(env!("CARGO_BIN_EXE_fastpatch"))
        .args(["locksmithctl", "--endpoint", &ep, "lock", "m1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_fastpatch"))
        .args(["locksmithctl", "--endpoint", &ep, "status"])
        .output()
        .unwrap();
    assert_eq!(
        text(&o),
        (
            "Available: 1\nMax: 2\n\nMACHINE ID\nm1\n".into(),
            String::new()
        )
    );
    // locksmithctl's own errors and exit codes, not clap's.
    let o = Command::new(&link).arg("frobnicate").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.starts_with("unknown command"), "{:?}", text(&o));
}

#[test]
fn linked_as_locksmithd_it_is_locksmithd() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("locksmithd");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_fastpatch"), &link).unwrap();
    let o = Command::new(&link).arg("--help").output().unwrap();
    assert!(o.status.success());
    assert!(
        text(&o)
            .0
            .contains("Reboot coordination daemon (locksmith compatible)"),
        "{:?}",
        text(&o)
    );
    // An unknown strategy in update.conf stops it with the reason, before any D-Bus.
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc/flatcar")).unwrap();
    std::fs::write(
        root.join("etc/flatcar/update.conf"),
        "REBOOT_STRATEGY=sometimes\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_fastpatch"))
        .args(["locksmithd", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("sometimes"), "{:?}", text(&o));
}
