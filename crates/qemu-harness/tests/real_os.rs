//! A real OS on fastpatch (issue 15): a Debian bookworm tree made by mmdebstrap, built into a
//! release by `fastpatch image build` (the product's builder), booted in QEMU (TCG). The stable
//! chooser initramfs runs the gptprio choice, checks the slot's seal with the release key it
//! carries, maps /usr through dm-verity and kexecs the slot's own kernel and initramfs; that
//! initramfs maps /usr again with the root hash it was handed, populates the first boot's ROOT
//! and switch_roots into systemd, where a unit reports what booted and powers off.

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
    // `veritysetup status usr` inside the guest, as on a Flatcar machine.
    let status = |key: &str| {
        o.log
            .lines()
            .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
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
fn an_update_under_systemd_boots_the_new_slots_kernel_and_is_marked_good() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let etcd = etcd();
    let (tb, tree, pem) = fleet_member(dir.path(), &etcd);
    let v1 = build(&tree, "1.0.0", &pem, dir.path());
    let v2 = build(&tree, "2.0.0", &pem, dir.path());
    assert_ne!(v1.root_hash, v2.root_hash);
    tb.server
        .publish("2.0.0", &dir.path().join("2.0.0/update.payload"), GROUP)
        .unwrap();
    let disk = dir.path().join("1.0.0/disk.img");

    // Boot 1: 1.0.0 under systemd; the engine (D-Bus on) installs 2.0.0 onto USR-B and stages
    // it; locksmithd sees UPDATED_NEED_REBOOT over D-Bus, takes the etcd reboot slot and
    // reboots through logind.
    let o = boot(&spec("real-os-update-1", &disk, &tb.key)).unwrap();
    eprintln!(
        "boot 1 (install and reboot): {:.1} s",
        o.elapsed.as_secs_f64()
    );
    assert!(o.rebooted(), "{}", o.describe());
    assert_eq!(result(&o, "systemd", "version"), "1.0.0");
    assert_eq!(result(&o, "cmdline", "release"), "1.0.0");
    assert_eq!(result(&o, "locksmithctl", "available"), "1");
    assert!(o.log.contains("reboot lock taken"), "{}", o.describe());
    assert_eq!(lock_holders(&etcd), [MACHINE_ID]);
    let b = attrs(&disk, USR_B_INDEX);
    assert!(
        !b.successful && b.tries == 1,
        "B staged: {b:?}\n{}",
        o.describe()
    );

    // Boot 2: the chooser spends B's try and kexecs B's own kernel with B's command line;
    // the health checks pass before boot-complete.target, the engine marks B good, the server
    // records complete, and locksmithd releases the slot only then.
    let o =
        fastpatch_qemu_harness::boot_until(&spec("real-os-update-2", &disk, &tb.key), &mut || {
            tb.status().unwrap() == "complete" && lock_holders(&etcd).is_empty()
        })
        .unwrap();
    eprintln!(
        "boot 2 (new slot, marked good): {:.1} s",
        o.elapsed.as_secs_f64()
    );
    assert!(o.stopped, "{}", o.describe());
    assert_eq!(result(&o, "chooser", "slot"), "B");
    assert_eq!(result(&o, "kexec", "slot"), "B");
    assert_eq!(result(&o, "slot-stage", "version"), "2.0.0");
    assert_eq!(
        result(&o, "cmdline", "release"),
        "2.0.0",
        "{}",
        o.describe()
    );
    // Inside the guest, before the gate: this machine still holds the reboot slot.
    assert_eq!(result(&o, "locksmithctl", "available"), "0");
    assert_eq!(result(&o, "locksmithctl", "holders"), MACHINE_ID);
    assert_eq!(
        result(&o, "gate", "boot-complete"),
        "active",
        "{}",
        o.describe()
    );
    assert!(
        o.log
            .contains("health checks passed on the first boot of slot USR-B"),
        "{}",
        o.describe()
    );
    let b = attrs(&disk, USR_B_INDEX);
    assert!(b.successful, "B marked good: {b:?}");
    let inst = tb.instance().unwrap().unwrap();
    assert_eq!(
        (inst.version.as_str(), inst.status.as_str()),
        ("2.0.0", "complete")
    );
}

#[test]
fn a_bad_update_under_systemd_falls_back_by_itself_and_halts_the_group() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let etcd = etcd();
    let (tb, tree, pem) = fleet_member(dir.path(), &etcd);
    build(&tree, "1.0.0", &pem, dir.path());
    make_bad(&tree);
    build(&tree, "3.0.0", &pem, dir.path());
    tb.server
        .publish("3.0.0", &dir.path().join("3.0.0/update.payload"), GROUP)
        .unwrap();
    let disk = dir.path().join("1.0.0/disk.img");

    // Boot 1: 1.0.0 installs 3.0.0 onto USR-B and reboots.
    let o = boot(&spec("real-os-bad-1", &disk, &tb.key)).unwrap();
    assert!(o.rebooted(), "{}", o.describe());
    let a_good = attrs(&disk, USR_A_INDEX);

    assert_eq!(lock_holders(&etcd), [MACHINE_ID]);

    // Boot 2: 3.0.0's own kernel and systemd come up, the required unit fails, the health
    // checks give up at their timeout, boot-complete.target is never reached, and the engine
    // reboots at once without marking B good; the slot stays held.
    let o = boot(&spec("real-os-bad-2", &disk, &tb.key)).unwrap();
    eprintln!(
        "boot 2 (3.0.0, gate fails): {:.1} s",
        o.elapsed.as_secs_f64()
    );
    assert!(o.rebooted(), "{}", o.describe());
    assert_eq!(result(&o, "chooser", "slot"), "B");
    assert_eq!(result(&o, "systemd", "version"), "3.0.0");
    assert!(o.result("gate").is_none(), "{}", o.describe());
    assert!(
        o.log.contains("fastpatch-health-check.service failed"),
        "{}",
        o.describe()
    );
    assert_eq!(lock_holders(&etcd), [MACHINE_ID]);
    let b = attrs(&disk, USR_B_INDEX);
    assert_eq!(
        (b.tries, b.successful),
        (0, false),
        "B not marked good: {b:?}"
    );
    assert_eq!(attrs(&disk, USR_A_INDEX), a_good);

    // Boot 3: the chooser falls back to A; 1.0.0's engine reports the rollback (3/0,
    // errorcode 44), safe mode halts the group, and locksmithd frees the slot once the good
    // slot's boot is complete.
    let halted = || tb.server.group(GROUP).unwrap().is_some_and(|g| g.halted);
    let o = fastpatch_qemu_harness::boot_until(&spec("real-os-bad-3", &disk, &tb.key), &mut || {
        tb.instance()
            .unwrap()
            .is_some_and(|i| i.last_error_code == Some(44))
            && halted()
            && lock_holders(&etcd).is_empty()
    })
    .unwrap();
    assert!(o.stopped, "{}", o.describe());
    assert_eq!(result(&o, "chooser", "slot"), "A");
    assert_eq!(result(&o, "kexec", "version"), "1.0.0");
    assert_eq!(tb.events().unwrap(), ["13/1", "14/1", "3/1", "3/0:44"]);
    let (a, b) = (attrs(&disk, USR_A_INDEX), attrs(&disk, USR_B_INDEX));
    assert!(a.successful && a.priority > 0, "A is the good slot: {a:?}");
    assert_eq!((b.tries, b.successful), (0, false), "B stays spent: {b:?}");
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
