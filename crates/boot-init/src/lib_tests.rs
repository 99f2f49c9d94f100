//! Unit tests of the pure parts in lib.rs.
use super::*;

#[test]
fn cmdline_defaults_and_overrides() {
    let cfg = BootConfig::from_cmdline("console=ttyS0 quiet").unwrap();
    assert_eq!(cfg, BootConfig::default());
    let cfg = BootConfig::from_cmdline(
        "console=ttyS0 fastpatch.disk=/dev/vdb fastpatch.net=0 fastpatch.mark_good \
         fastpatch.probe=http://10.0.2.2:8080/x fastpatch.os=/usr/bin/os \
         fastpatch.disk_timeout_ms=250 fastpatch.root=0 fastpatch.os_arg=--root \
         fastpatch.os_arg=/var",
    )
    .unwrap();
    assert_eq!(cfg.os_args, ["--root", "/var"]);
    assert_eq!(cfg.root, None);
    assert_eq!(cfg.disk, "/dev/vdb");
    assert!(!cfg.net);
    assert!(cfg.mark_good);
    assert_eq!(cfg.probe.as_deref(), Some("http://10.0.2.2:8080/x"));
    assert_eq!(cfg.os.as_deref(), Some("/usr/bin/os"));
    assert_eq!(cfg.disk_timeout, Duration::from_millis(250));
}

#[test]
fn cmdline_rejects_bad_values() {
    for bad in [
        "fastpatch.disk=vda",
        "fastpatch.net=maybe",
        "fastpatch.probe=https://x",
        "fastpatch.os=init",
        "fastpatch.disk_timeout_ms=soon",
        "fastpatch.root=nine",
    ] {
        let err = BootConfig::from_cmdline(bad).unwrap_err();
        assert!(err.to_string().contains("is not valid"), "{bad}: {err}");
    }
}

#[test]
fn engine_mode_from_the_cmdline() {
    let cfg = BootConfig::from_cmdline(
        "fastpatch.engine=/usr/bin/fastpatch fastpatch.log=debug,hyper=info",
    )
    .unwrap();
    assert_eq!(cfg.engine.as_deref(), Some("/usr/bin/fastpatch"));
    assert_eq!(cfg.log, "debug,hyper=info");
    assert_eq!(BootConfig::default().log, "info");
    for bad in [
        "fastpatch.engine=fastpatch",
        "fastpatch.log=",
        "fastpatch.os=/init fastpatch.engine=/usr/bin/fastpatch",
    ] {
        let err = BootConfig::from_cmdline(bad).unwrap_err();
        assert!(err.to_string().contains("is not valid"), "{bad}: {err}");
    }
}

#[test]
fn engine_launch_layers_and_order() {
    let l = engine_launch("/usr/bin/fastpatch", USR_B_INDEX, "/dev/vda").unwrap();
    assert_eq!(l.program, "/usr/bin/fastpatch");
    assert_eq!(
        l.args,
        [
            "engine",
            "run",
            "--config",
            ENGINE_DEFAULTS_LAYER,
            "--config",
            ENGINE_VENDOR_LAYER,
            "--config",
            ENGINE_ADMIN_LAYER,
            "--config",
            ENGINE_BOOT_LAYER
        ]
    );
    assert!(l.boot.contains("booted_slot = \"b\"\n"), "{}", l.boot);
    assert!(l.boot.contains("disk = \"/dev/vda\"\n"), "{}", l.boot);
    for want in [
        "dbus = false\n",
        "reboot_after_update = true\n",
        "reboot_command = [\"/init\", \"reboot\"]\n",
        "commands = [[\"/init\", \"health\"]]\n",
        "state_file = \"/var/lib/fastpatch/engine.json\"\n",
    ] {
        assert!(l.defaults.contains(want), "{want} missing:\n{}", l.defaults);
    }
    let a = engine_launch("/x", USR_A_INDEX, "/dev/vda").unwrap();
    assert!(a.boot.contains("booted_slot = \"a\""));
    assert!(engine_launch("/x", 9, "/dev/vda").is_err());
}

#[test]
fn toml_strings_are_escaped() {
    assert_eq!(toml_string("/dev/vda"), "\"/dev/vda\"");
    assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
}

#[test]
fn exit_codes_round_trip_and_differ() {
    let all = [
        GuestExit::OsOk,
        GuestExit::OsFailed,
        GuestExit::InitFailed,
        GuestExit::NoBootableSlot,
    ];
    for e in all {
        assert_eq!(GuestExit::from_qemu_status(e.qemu_status()), Some(e));
        assert_ne!(e.qemu_status(), 0);
    }
    assert_eq!(GuestExit::OsOk.qemu_status(), 33);
    assert_eq!(GuestExit::from_qemu_status(0), None);
    assert_eq!(GuestExit::from_qemu_status(1), None);
}

#[test]
fn os_release_version_variants() {
    assert_eq!(
        os_release_version("NAME=x\nVERSION=1\n").as_deref(),
        Some("1")
    );
    assert_eq!(
        os_release_version("VERSION=\"3975.2.0\"\nVERSION_ID=3975.2.0").as_deref(),
        Some("3975.2.0")
    );
    assert_eq!(os_release_version("VERSION_ID=2\n"), None);
}

#[test]
fn only_a_clean_os_exit_is_ok() {
    assert_eq!(os_exit_verdict(Some(0)), GuestExit::OsOk);
    assert_eq!(os_exit_verdict(Some(1)), GuestExit::OsFailed);
    assert_eq!(os_exit_verdict(None), GuestExit::OsFailed);
}

#[test]
fn only_ok_is_healthy() {
    assert_eq!(health_verdict(Some("ok\n")), Ok(()));
    assert!(health_verdict(Some("fail"))
        .unwrap_err()
        .contains("\"fail\""));
    assert!(health_verdict(None).unwrap_err().contains("missing"));
}

#[test]
fn load_order_skips_comments() {
    assert_eq!(
        module_load_order("# deps first\nvirtio.ko\n\n virtio_blk.ko \n"),
        vec!["virtio.ko", "virtio_blk.ko"]
    );
}

#[test]
fn result_lines_round_trip() {
    let line = result_line("chooser", &[("slot", "B"), ("partition", "4")]);
    assert_eq!(line, "FASTPATCH-RESULT chooser slot=B partition=4");
    let (stage, fields) = parse_result_line(&format!("[  1.2] {line}\r")).unwrap();
    assert_eq!(stage, "chooser");
    assert_eq!(fields[1], ("partition".to_string(), "4".to_string()));
    assert_eq!(parse_result_line("something else"), None);
}

#[test]
fn choice_wording() {
    let before = SlotAttrs {
        priority: 2,
        tries: 1,
        successful: false,
    };
    let after = SlotAttrs { tries: 0, ..before };
    let text = describe_choice(USR_B_INDEX, before, after);
    assert!(
        text.contains("USR-B") && text.contains("tries 1 -> 0"),
        "{text}"
    );
    let good = SlotAttrs {
        priority: 1,
        tries: 0,
        successful: true,
    };
    assert!(describe_choice(USR_A_INDEX, good, good).contains("marked successful"));
}
