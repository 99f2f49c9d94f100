//! A real OS on fastpatch (issue 15): a Debian bookworm tree made by mmdebstrap, built into a
//! release by `fastpatch image build` (the product's builder), booted in QEMU (TCG). The stable
//! chooser initramfs runs the gptprio choice, checks the slot's seal with the release key it
//! carries, maps /usr through dm-verity and kexecs the slot's own kernel and initramfs; that
//! initramfs maps /usr again with the root hash it was handed, populates the first boot's ROOT
//! and switch_roots into systemd, where a unit reports what booted and powers off.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fastpatch_boot_init::GuestExit;
use fastpatch_disk::{Disk, OpenMode, SlotAttrs, USR_A_INDEX, USR_B_INDEX};
use fastpatch_image::BuildOptions;
use fastpatch_locksmith::testsupport::EtcdServer;
use fastpatch_qemu_harness::{
    boot, BootOutcome, BootSpec, FsFile, Lab, SigningKey, Testbed, GROUP, MACHINE_ID,
    TEST_ENGINE_LAYER,
};

const MIB: u64 = 1 << 20;

fn lab() -> &'static Lab {
    Lab::get(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .unwrap_or_else(|e| panic!("QEMU lab setup failed: {e}"))
}

/// Reports from inside the booted OS, as systemd runs it, then powers off.
const REPORT: &str = r#"#!/bin/sh
v=$(. /usr/lib/os-release; echo "$VERSION")
src=$(findmnt -no SOURCE /usr)
st=$(dmsetup status usr 2>/dev/null | awk '{print $3 "-" $4}')
etc=$(test -s /etc/os-release && echo populated || echo empty)
echo "FASTPATCH-RESULT systemd version=$v usr=$src verity=$st pid1=$(cat /proc/1/comm) kernel=$(uname -r) etc=$etc" > /dev/console
veritysetup status usr > /dev/console 2>&1
op=$(update_engine_client -status 2>/dev/null | sed -n 's/^CURRENT_OP=//p')
fp=$(fastpatch status --json 2>/dev/null | sed -n 's/.*"current_operation": *"\([A-Za-z]*\)".*/\1/p')
echo "FASTPATCH-RESULT client op=${op:-none} status=${fp:-none}" > /dev/console
marker=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^fastpatch\.release=//p')
echo "FASTPATCH-RESULT cmdline release=${marker:-none}" > /dev/console
ep=$(sed -n 's/^LOCKSMITHD_ENDPOINT=//p' /etc/flatcar/update.conf)
if [ -n "$ep" ]; then
  locksmithctl --endpoint "$ep" status 2>&1 | awk '/^Available:/ {a=$2} /^Max:/ {m=$2}
    f && NF {h = h (h ? "," : "") $1} /^MACHINE ID/ {f=1}
    END {printf "FASTPATCH-RESULT locksmithctl available=%s max=%s holders=%s\n", a, m, (h ? h : "none")}' > /dev/console
fi
[ -e /etc/fastpatch-test-stay ] || systemctl poweroff --no-block
"#;

/// Runs only once `boot-complete.target` is reached (the health checks passed), pulled in by
/// the check unit so that no target orders itself after it.
const GATE_REPORT_UNIT: &str = "[Unit]\nDescription=fastpatch test: report the boot complete\nRequires=boot-complete.target\nAfter=boot-complete.target\n\n[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo \"FASTPATCH-RESULT gate boot-complete=$$(systemctl is-active boot-complete.target) check=$$(systemctl is-active fastpatch-health-check.service)\" > /dev/console'\n";

/// The shipped units' output on the serial console as well as the journal (a drop-in, the unit
/// files stay as shipped).
fn console_drop_ins() -> Vec<FsFile> {
    ["fastpatch-engine", "fastpatch-health-check", "locksmithd"]
        .iter()
        .map(|unit| {
            FsFile::new(
                format!("etc/systemd/system/{unit}.service.d/10-console.conf"),
                "[Service]\nStandardOutput=journal+console\nStandardError=journal+console\n",
                0o644,
            )
        })
        .collect()
}

const REPORT_UNIT: &str = "[Unit]\nDescription=fastpatch test: report the boot\nAfter=basic.target fastpatch-engine.service\n\n[Service]\nType=oneshot\nExecStart=/usr/lib/fastpatch-test/report\n\n[Install]\nWantedBy=multi-user.target\n";

/// The Debian tree with the report unit and `etc` files, unpacked under `dir`.
fn debian_tree(dir: &Path, etc: &[FsFile]) -> PathBuf {
    let tar = lab()
        .assets
        .debian_rootfs()
        .expect("making the Debian root filesystem");
    let tree = dir.join("rootfs");
    std::fs::create_dir_all(&tree).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&tree)
        .status()
        .unwrap();
    assert!(st.success(), "unpacking {}", tar.display());
    let report = tree.join("usr/lib/fastpatch-test/report");
    std::fs::create_dir_all(report.parent().unwrap()).unwrap();
    std::fs::write(&report, REPORT).unwrap();
    std::fs::set_permissions(&report, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let units = tree.join("usr/lib/systemd/system");
    std::fs::write(units.join("fastpatch-test-report.service"), REPORT_UNIT).unwrap();
    std::fs::write(units.join("fastpatch-test-gate.service"), GATE_REPORT_UNIT).unwrap();
    for (wanted_by, unit) in [
        ("multi-user.target.wants", "fastpatch-test-report.service"),
        (
            "fastpatch-health-check.service.wants",
            "fastpatch-test-gate.service",
        ),
    ] {
        let wants = units.join(wanted_by);
        std::fs::create_dir_all(&wants).unwrap();
        std::os::unix::fs::symlink(format!("../{unit}"), wants.join(unit)).unwrap();
    }
    for file in etc.iter().chain(&console_drop_ins()) {
        let path = tree.join(file.path.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, &file.data).unwrap();
        std::fs::set_permissions(
            &path,
            std::os::unix::fs::PermissionsExt::from_mode(file.mode),
        )
        .unwrap();
    }
    tree
}

/// Builds `version` of the tree into `dir/<version>` with the lab's static binaries.
fn build(tree: &Path, version: &str, key: &Path, dir: &Path) -> fastpatch_image::Release {
    let mut opts = BuildOptions::new(tree.to_path_buf(), version.into(), dir.join(version));
    opts.keys = vec![key.to_path_buf()];
    opts.init = lab().init.clone();
    opts.fastpatch_binary = lab().engine().unwrap().to_path_buf();
    // A marker on the release's own kernel command line: the guest reports which it booted.
    opts.cmdline = Some(format!("fastpatch.release={version}"));
    let started = Instant::now();
    let release =
        fastpatch_image::build(&opts, &mut |s| eprintln!("image {version}: {s}")).unwrap();
    eprintln!(
        "built {version} in {:.1} s: USR image {} MiB",
        started.elapsed().as_secs_f64(),
        release.usr_image_bytes / MIB
    );
    release
}

/// A boot of `disk` through the chooser initramfs that trusts `key`, kexec mode.
fn spec(name: &str, disk: &Path, key: &SigningKey) -> BootSpec {
    let lab = lab();
    let chooser = lab
        .initramfs_with(
            &format!("{name}-chooser"),
            &[FsFile::new(
                "lib/fastpatch/keys/release.pem",
                key.public_pem(),
                0o644,
            )],
        )
        .unwrap();
    let mut s = BootSpec::new(
        &lab.assets.kernel,
        &chooser,
        disk,
        &lab.log_dir.join(format!("{name}.log")),
    )
    .arg("fastpatch.kexec=1")
    .timeout(Duration::from_secs(600));
    s.memory_mib = 1024;
    s
}

fn result<'a>(o: &'a BootOutcome, stage: &str, key: &str) -> &'a str {
    o.result(stage)
        .and_then(|r| r.get(key))
        .unwrap_or_else(|| panic!("no {stage} {key} in the guest's results\n{}", o.describe()))
}

/// Writes `image` into USR-B (durably) and stages B for the next boot, as an install would.
fn stage_b(disk: &Path, image: &[u8]) {
    let (b_at, _) = Disk::open(disk, OpenMode::ReadOnly)
        .unwrap()
        .partition_byte_range(USR_B_INDEX)
        .unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.seek(SeekFrom::Start(b_at)).unwrap();
    f.write_all(image).unwrap();
    f.sync_all().unwrap();
    drop(f);
    Disk::open(disk, OpenMode::ReadWrite)
        .unwrap()
        .stage(USR_B_INDEX)
        .unwrap();
}

fn attrs(disk: &Path, index: u32) -> SlotAttrs {
    Disk::open(disk, OpenMode::ReadOnly)
        .unwrap()
        .partition(index)
        .unwrap()
        .attrs
}

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

/// systemd-networkd with DHCP on QEMU's user network (the host is 10.0.2.2).
fn network_files() -> Vec<FsFile> {
    // A drop-in that pulls networkd in from multi-user.target (FsFile cannot be a link).
    vec![
        FsFile::new(
            "etc/systemd/network/10-qemu.network",
            "[Match]\nName=en*\n\n[Network]\nDHCP=ipv4\n",
            0o644,
        ),
        FsFile::new(
            "etc/systemd/system/multi-user.target.d/10-network.conf",
            "[Unit]\nWants=systemd-networkd.service systemd-networkd-wait-online.service\n",
            0o644,
        ),
        FsFile::new("etc/fastpatch-test-stay", "", 0o644),
    ]
}

/// The server, the release key (private PEM written under `dir`) and a Debian tree configured
/// as a member of its group: machine-id, update.conf (its reboots coordinated by locksmithd
/// through `etcd`'s reboot semaphore, max 1), CA bundle, networkd, and an engine layer that
/// checks soon.
fn fleet_member(dir: &Path, etcd: &EtcdServer) -> (Testbed<'static>, PathBuf, PathBuf) {
    let tb = Testbed::new(lab(), dir).unwrap();
    let mut etc = tb.etc_files(TEST_ENGINE_LAYER).unwrap();
    for file in etc.iter_mut() {
        if file.path.ends_with("flatcar/update.conf") {
            let guest_etcd = format!("http://10.0.2.2:{}", etcd.client_port);
            file.data.extend(
                format!(
                    "REBOOT_STRATEGY=etcd-lock\nLOCKSMITHD_ENDPOINT={guest_etcd}\nLOCKSMITHD_LOCK_RETRY=5s\n"
                )
                .as_bytes(),
            );
        }
    }
    etc.extend(network_files());
    let tree = debian_tree(dir, &etc);
    let pem = dir.join("release.pem");
    tb.key.write_private_pem(&pem).unwrap();
    (tb, tree, pem)
}

/// The reboot semaphore's holders, as `fastpatch locksmithctl status` on the host prints them.
fn lock_holders(etcd: &EtcdServer) -> Vec<String> {
    let out = Command::new(lab().engine().unwrap())
        .args(["locksmithctl", "--endpoint", &etcd.endpoint(), "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "locksmithctl status: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.split("MACHINE ID\n")
        .nth(1)
        .map(|ids| ids.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

fn etcd() -> EtcdServer {
    EtcdServer::start().unwrap_or_else(|e| panic!("{e}"))
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

/// Version 3.0.0 of the tree: a unit its health gate requires fails on it.
fn make_bad(tree: &Path) {
    let units = tree.join("usr/lib/systemd/system");
    std::fs::write(
        units.join("fastpatch-test-required.service"),
        "[Unit]\nDescription=fastpatch test: a service 3.0.0 breaks\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/false\n\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "../fastpatch-test-required.service",
        units.join("multi-user.target.wants/fastpatch-test-required.service"),
    )
    .unwrap();
    let vendor = tree.join("usr/lib/fastpatch/engine.d");
    std::fs::create_dir_all(&vendor).unwrap();
    std::fs::write(
        vendor.join("60-health.toml"),
        "[health]\nunits = [\"fastpatch-test-required.service\"]\n",
    )
    .unwrap();
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
