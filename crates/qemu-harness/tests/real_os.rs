//! A real OS on fastpatch (issue 15): a Debian bookworm tree made by mmdebstrap, built into a
//! release by `fastpatch image build` (the product's builder), booted in QEMU (TCG). The stable
//! chooser initramfs runs the gptprio choice, checks the slot's seal with the release key it
//! carries, maps /usr through dm-verity and kexecs the slot's own kernel and initramfs; that
//! initramfs maps /usr again with the root hash it was handed, populates the first boot's ROOT
//! and switch_roots into systemd, where a unit reports what booted and powers off.
//!
//! Updates under systemd, good and bad, run as a fleet of three machines (`fleet/mod.rs`); the
//! scenarios here are the first boot, the chooser's refusals, and an update changed on disk
//! before its reboot.

#[path = "fleet/mod.rs"]
mod fleet;
mod real_os_support;

use real_os_support::*;

#[test]
fn a_debian_release_boots_its_own_kernel_with_verified_usr_into_systemd() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = debian_tree(dir.path(), &[]);
    let key = SigningKey::generate().unwrap();
    let pem = dir.path().join("release.pem");
    key.write_private_pem(&pem).unwrap();
    let release = build(&tree, "1.0.0", &pem, dir.path());
    let disk = dir.path().join("1.0.0/disk.img");
    let spec = |name: &str| {
        let mut s = spec(name, &disk, &key);
        s.net = false;
        s
    };

    // 1. USR-A: the chooser kexecs A's kernel; /usr is a verity device; systemd is PID 1.
    let o = boot(&spec("real-os-first-boot")).unwrap();
    assert_eq!(result(&o, "cmdline", "refused"), "none", "{}", o.describe());
    eprintln!(
        "first boot to systemd's report: {:.1} s",
        o.elapsed.as_secs_f64()
    );
    assert_eq!(result(&o, "chooser", "slot"), "A", "{}", o.describe());
    assert_eq!(result(&o, "kexec", "version"), "1.0.0");
    assert_eq!(result(&o, "slot-stage", "version"), "1.0.0");
    assert_eq!(result(&o, "systemd", "version"), "1.0.0");
    assert_eq!(result(&o, "systemd", "pid1"), "systemd");
    assert!(
        result(&o, "systemd", "usr").starts_with("/dev/dm-"),
        "{}",
        o.describe()
    );
    assert_eq!(
        result(&o, "systemd", "verity"),
        "verity-V",
        "{}",
        o.describe()
    );
    assert_eq!(result(&o, "systemd", "etc"), "populated");
    // `veritysetup status usr` inside the guest, as on a Flatcar machine. Its lines can share
    // the serial console with getty's prompt (`vm login:   status:      verified`), so a key
    // is looked for anywhere in a line.
    let status = |key: &str| {
        o.log
            .lines()
            .find_map(|l| l.split_once(key).map(|(_, v)| v.trim()))
            .unwrap_or_else(|| panic!("no {key:?} in veritysetup's status\n{}", o.describe()))
            .to_string()
    };
    assert_eq!(status("type:"), "VERITY");
    assert_eq!(status("root hash:"), release.root_hash);
    assert_eq!(status("status:"), "verified");
    assert!(o.rebooted(), "{}", o.describe());

    // 2. USR-B staged with a seal that does not verify: the chooser refuses it and boots A.
    let image = dir.path().join("1.0.0/usr.img");
    let mut bytes = std::fs::read(&image).unwrap();
    let at = release.usr_fs_bytes as usize + 16;
    let pos = bytes[at..at + 600]
        .windows(7)
        .position(|w| w == b"\"1.0.0\"")
        .unwrap();
    bytes[at + pos + 1] = b'9';
    stage_b(&disk, &bytes);
    let o = boot(&spec("real-os-bad-seal")).unwrap();
    assert!(o.log.contains("USR-B is not booted"), "{}", o.describe());
    assert_eq!(result(&o, "seal-refused", "slot"), "B");
    // A's kernel is told, so its engine can report it.
    assert_eq!(
        result(&o, "cmdline", "refused"),
        "USR-B",
        "{}",
        o.describe()
    );
    assert_eq!(
        result(&o, "systemd", "version"),
        "1.0.0",
        "{}",
        o.describe()
    );
    assert_eq!(attrs(&disk, USR_B_INDEX).priority, 0);
    assert!(attrs(&disk, USR_A_INDEX).successful);

    // 3. USR-B holds the correctly sealed image with one data block changed after it was
    //    written (a disk fault, or tampering after staging): on B's first boot the chooser
    //    reads it whole through dm-verity, the changed block fails, B is refused, A boots.
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[(release.usr_fs_bytes / 2) as usize] ^= 0xff;
    stage_b(&disk, &bytes);
    let o = boot(&spec("real-os-changed-block")).unwrap();
    assert!(
        o.log.contains("does not read back through dm-verity"),
        "{}",
        o.describe()
    );
    assert_eq!(result(&o, "seal-refused", "slot"), "B");
    assert_eq!(result(&o, "systemd", "version"), "1.0.0");
    assert_eq!(attrs(&disk, USR_B_INDEX).priority, 0);
    assert!(attrs(&disk, USR_A_INDEX).successful);

    // 4. A chooser without release keys cannot check a seal: the boot fails and no slot is
    //    taken out of the boot order (a broken initramfs must not make a disk unbootable).
    let a_before = attrs(&disk, USR_A_INDEX);
    let mut keyless = BootSpec::new(
        &lab().assets.kernel,
        &lab().initramfs,
        &disk,
        &lab().log_dir.join("real-os-no-keys.log"),
    )
    .arg("fastpatch.kexec=1")
    .timeout(Duration::from_secs(300));
    keyless.net = false;
    let o = boot(&keyless).unwrap();
    assert_eq!(o.exit(), Some(GuestExit::InitFailed), "{}", o.describe());
    assert!(
        o.log.contains("loading the release keys"),
        "{}",
        o.describe()
    );
    assert_eq!(attrs(&disk, USR_A_INDEX), a_before);
}

#[test]
fn an_update_changed_on_disk_before_its_reboot_is_refused_and_reported() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let etcd = etcd();
    let (tb, tree, pem) = fleet_member(dir.path(), &etcd);
    build(&tree, "1.0.0", &pem, dir.path());
    let v2 = build(&tree, "2.0.0", &pem, dir.path());
    tb.server
        .publish("2.0.0", &dir.path().join("2.0.0/update.payload"), GROUP)
        .unwrap();
    let disk = dir.path().join("1.0.0/disk.img");

    // Boot 1: 1.0.0 installs and stages 2.0.0, takes the reboot slot and reboots.
    let o = boot(&spec("real-os-refused-1", &disk, &tb.key)).unwrap();
    assert!(o.rebooted(), "{}", o.describe());
    let a_good = attrs(&disk, USR_A_INDEX);
    assert_eq!(lock_holders(&etcd), [MACHINE_ID]);

    // Between the install and the reboot one block of USR-B's /usr changes.
    change_byte_in_b(&disk, v2.usr_fs_bytes / 2);

    // Boot 2: the chooser reads B whole through dm-verity on its first boot, the block fails,
    // B is refused and A boots with `fastpatch.refused=USR-B`; 1.0.0's engine reports the
    // refusal (3/0, errorcode 15, not a plain rollback), safe mode halts the group, and
    // locksmithd frees the reboot slot once A's boot is complete.
    let halted = || tb.server.group(GROUP).unwrap().is_some_and(|g| g.halted);
    let o =
        fastpatch_qemu_harness::boot_until(&spec("real-os-refused-2", &disk, &tb.key), &mut || {
            tb.instance()
                .unwrap()
                .is_some_and(|i| i.last_error_code == Some(15))
                && halted()
                && lock_holders(&etcd).is_empty()
        })
        .unwrap();
    eprintln!(
        "boot 2 (B refused, A reports): {:.1} s",
        o.elapsed.as_secs_f64()
    );
    assert!(o.stopped, "{}", o.describe());
    assert!(
        o.log.contains("does not read back through dm-verity"),
        "{}",
        o.describe()
    );
    assert_eq!(result(&o, "seal-refused", "slot"), "B");
    assert_eq!(result(&o, "kexec", "version"), "1.0.0");
    assert_eq!(result(&o, "cmdline", "refused"), "USR-B");
    assert!(
        o.log.contains("the boot chooser refused USR-B"),
        "{}",
        o.describe()
    );
    assert_eq!(tb.events().unwrap(), ["13/1", "14/1", "3/1", "3/0:15"]);
    let inst = tb.instance().unwrap().unwrap();
    assert_eq!(inst.version, "1.0.0");
    let b = attrs(&disk, USR_B_INDEX);
    assert_eq!((b.priority, b.successful), (0, false), "B refused: {b:?}");
    assert_eq!(attrs(&disk, USR_A_INDEX), a_good);
}
