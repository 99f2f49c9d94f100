//! The built `locksmithctl` binary against a real etcd: output byte for byte as locksmith's.

use std::process::{Command, Output};

use fastpatch_locksmith::testsupport::EtcdServer;

fn ctl(endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_locksmithctl"))
        .arg("-endpoint")
        .arg(endpoint)
        .args(args)
        .env_remove("LOCKSMITHCTL_GROUP")
        .output()
        .expect("run locksmithctl")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
    String::from_utf8(o.stdout).unwrap()
}

fn fails(o: Output) -> String {
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "");
    String::from_utf8(o.stderr).unwrap()
}

#[test]
fn status_set_max_lock_unlock_byte_for_byte() {
    let e = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let ep = e.endpoint();
    assert_eq!(ok(ctl(&ep, &["status"])), "Available: 1\nMax: 1\n");
    assert_eq!(ok(ctl(&ep, &["set-max", "3"])), "Old-Max: 1\nMax: 3\n");
    assert_eq!(ok(ctl(&ep, &["lock", "bbbb"])), "");
    assert_eq!(ok(ctl(&ep, &["--endpoint", &ep, "lock", "aaaa"])), "");
    assert_eq!(
        ok(ctl(&ep, &["status"])),
        "Available: 1\nMax: 3\n\nMACHINE ID\naaaa\nbbbb\n"
    );
    // Re-lock by a holder is fine; a third and fourth holder hit the limit.
    assert_eq!(ok(ctl(&ep, &["lock", "aaaa"])), "");
    assert_eq!(ok(ctl(&ep, &["lock", "cccc"])), "");
    assert_eq!(
        fails(ctl(&ep, &["lock", "dddd"])),
        "Error locking: semaphore is at 0\n"
    );
    assert_eq!(
        fails(ctl(&ep, &["unlock", "zzzz"])),
        "Error unlocking: holder does not exist\n"
    );
    assert_eq!(
        fails(ctl(&ep, &["set-max", "2"])),
        "Error setting value: cannot set max to 2: 3 machine(s) hold the lock; unlock some first\n"
    );
    for id in ["aaaa", "bbbb", "cccc"] {
        assert_eq!(ok(ctl(&ep, &["unlock", id])), "");
    }
    assert_eq!(ok(ctl(&ep, &["status"])), "Available: 3\nMax: 3\n");

    // Default id from the machine-id file; groups are separate semaphores.
    let dir = tempfile::tempdir().unwrap();
    let mid = dir.path().join("machine-id");
    std::fs::write(&mid, "0123456789abcdef0123456789abcdef\n").unwrap();
    let midf = mid.to_str().unwrap();
    assert_eq!(
        ok(ctl(&ep, &["-group=web", "-machine-id-file", midf, "lock"])),
        ""
    );
    assert_eq!(
        ok(ctl(&ep, &["-group", "web", "status"])),
        "Available: 0\nMax: 1\n\nMACHINE ID\n0123456789abcdef0123456789abcdef\n"
    );
    assert_eq!(ok(ctl(&ep, &["status"])), "Available: 3\nMax: 3\n");
    assert_eq!(
        ok(ctl(
            &ep,
            &["-group", "web", "-machine-id-file", midf, "unlock"]
        )),
        ""
    );
    assert_eq!(
        fails(ctl(
            &ep,
            &["-machine-id-file", "/nonexistent/machine-id", "lock"]
        )),
        "Cannot read machine-id\n"
    );

    // `reboot` takes this machine's slot and runs the reboot command.
    let marker = dir.path().join("rebooted");
    let cmd = format!("touch {}", marker.display());
    assert_eq!(
        ok(ctl(
            &ep,
            &["-machine-id-file", midf, "-reboot-command", &cmd, "reboot"]
        )),
        ""
    );
    assert!(marker.exists());
    assert!(ok(ctl(&ep, &["status"])).contains("0123456789abcdef0123456789abcdef"));
}

#[test]
fn errors_without_etcd_and_on_bad_usage() {
    // A port nobody listens on.
    let port = fastpatch_locksmith::testsupport::free_port().unwrap();
    let ep = format!("http://127.0.0.1:{port}");
    let err = fails(ctl(&ep, &["status"]));
    assert!(err.starts_with("Error initializing etcd client: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let o = ctl(&ep, &["-bogus", "status"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("flag provided but not defined: -bogus"));
    assert!(fails(ctl(&ep, &["frobnicate"])).starts_with("unknown command"));
    assert!(fails(ctl(&ep, &["set-max", "x"])).starts_with("Error setting value: invalid max"));
}
