//! The pieces of the real-OS scenarios (`real_os.rs`): the Debian tree with its report units,
//! building a release with the product's builder, a boot through the chooser initramfs, and a
//! fleet member's configuration (etcd reboot coordination, networkd).
pub use std::io::{Seek, SeekFrom, Write};
pub use std::path::{Path, PathBuf};
pub use std::process::Command;
pub use std::time::{Duration, Instant};

pub use fastpatch_boot_init::GuestExit;
pub use fastpatch_disk::{Disk, OpenMode, SlotAttrs, USR_A_INDEX, USR_B_INDEX};
pub use fastpatch_image::BuildOptions;
pub use fastpatch_locksmith::testsupport::EtcdServer;
pub use fastpatch_qemu_harness::{
    boot, BootOutcome, BootSpec, FsFile, Lab, SigningKey, Testbed, ADMIN_TOKEN, GROUP, MACHINE_ID,
    TEST_ENGINE_LAYER,
};

pub const MIB: u64 = 1 << 20;

pub fn lab() -> &'static Lab {
    Lab::get(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .unwrap_or_else(|e| panic!("QEMU lab setup failed: {e}"))
}

/// Reports from inside the booted OS, as systemd runs it, then powers off.
pub const REPORT: &str = r#"#!/bin/sh
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
refused=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^fastpatch\.refused=//p' | paste -sd,)
echo "FASTPATCH-RESULT cmdline release=${marker:-none} refused=${refused:-none}" > /dev/console
echo "FASTPATCH-RESULT identity machine-id=$(cat /etc/machine-id)" > /dev/console
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
pub const GATE_REPORT_UNIT: &str = "[Unit]\nDescription=fastpatch test: report the boot complete\nRequires=boot-complete.target\nAfter=boot-complete.target\n\n[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo \"FASTPATCH-RESULT gate boot-complete=$$(systemctl is-active boot-complete.target) check=$$(systemctl is-active fastpatch-health-check.service)\" > /dev/console'\n";

/// The shipped units' output on the serial console as well as the journal (a drop-in, the unit
/// files stay as shipped).
pub fn console_drop_ins() -> Vec<FsFile> {
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

pub const REPORT_UNIT: &str = "[Unit]\nDescription=fastpatch test: report the boot\nAfter=basic.target fastpatch-engine.service\n\n[Service]\nType=oneshot\nExecStart=/usr/lib/fastpatch-test/report\n\n[Install]\nWantedBy=multi-user.target\n";

/// The Debian tree with the report unit and `etc` files, unpacked under `dir`.
pub fn debian_tree(dir: &Path, etc: &[FsFile]) -> PathBuf {
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
pub fn build(tree: &Path, version: &str, key: &Path, dir: &Path) -> fastpatch_image::Release {
    let mut opts = BuildOptions::new(tree.to_path_buf(), version.into(), dir.join(version));
    opts.keys = vec![key.to_path_buf()];
    opts.init = lab().init.clone();
    opts.fastpatch_binary = lab().engine().unwrap().to_path_buf();
    opts.engined_binary = opts.fastpatch_binary.with_file_name("fastpatch-engined");
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
pub fn spec(name: &str, disk: &Path, key: &SigningKey) -> BootSpec {
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

pub fn result<'a>(o: &'a BootOutcome, stage: &str, key: &str) -> &'a str {
    o.result(stage)
        .and_then(|r| r.get(key))
        .unwrap_or_else(|| panic!("no {stage} {key} in the guest's results\n{}", o.describe()))
}

/// Writes `image` into USR-B (durably) and stages B for the next boot, as an install would.
pub fn stage_b(disk: &Path, image: &[u8]) {
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

/// Changes one byte of USR-B's data in place, `at` bytes into the partition (a disk fault, or
/// tampering after an install).
pub fn change_byte_in_b(disk: &Path, at: u64) {
    let (b_at, b_len) = Disk::open(disk, OpenMode::ReadOnly)
        .unwrap()
        .partition_byte_range(USR_B_INDEX)
        .unwrap();
    assert!(at < b_len);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(b_at + at)).unwrap();
    std::io::Read::read_exact(&mut f, &mut byte).unwrap();
    byte[0] ^= 0xff;
    f.seek(SeekFrom::Start(b_at + at)).unwrap();
    f.write_all(&byte).unwrap();
    f.sync_all().unwrap();
}

pub fn attrs(disk: &Path, index: u32) -> SlotAttrs {
    Disk::open(disk, OpenMode::ReadOnly)
        .unwrap()
        .partition(index)
        .unwrap()
        .attrs
}

/// systemd-networkd with DHCP on QEMU's user network (the host is 10.0.2.2).
pub fn network_files() -> Vec<FsFile> {
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
pub fn fleet_member(dir: &Path, etcd: &EtcdServer) -> (Testbed<'static>, PathBuf, PathBuf) {
    fleet_member_with(dir, etcd, &Member::default())
}

/// What a fleet member's tree has beyond [`fleet_member`]'s defaults.
pub struct Member<'a> {
    /// The engine's admin layer.
    pub engine_layer: &'a str,
    /// Lines added to update.conf.
    pub update_conf: &'a str,
    /// `false`: /etc/machine-id stays empty in the image, so every machine made from it
    /// gets its own on its first boot (systemd writes it to ROOT), as Flatcar machines do.
    pub fixed_machine_id: bool,
    /// More files for the tree.
    pub extra: &'a [FsFile],
}

impl Default for Member<'_> {
    fn default() -> Self {
        Member {
            engine_layer: TEST_ENGINE_LAYER,
            update_conf: "",
            fixed_machine_id: true,
            extra: &[],
        }
    }
}

/// [`fleet_member`] configured by `member`.
pub fn fleet_member_with(
    dir: &Path,
    etcd: &EtcdServer,
    member: &Member,
) -> (Testbed<'static>, PathBuf, PathBuf) {
    let tb = Testbed::new(lab(), dir).unwrap();
    let mut etc = tb.etc_files(member.engine_layer).unwrap();
    if !member.fixed_machine_id {
        etc.retain(|f| !f.path.ends_with("machine-id"));
    }
    for file in etc.iter_mut() {
        if file.path.ends_with("flatcar/update.conf") {
            let guest_etcd = format!("http://10.0.2.2:{}", etcd.client_port);
            file.data.extend(
                format!(
                    "REBOOT_STRATEGY=etcd-lock\nLOCKSMITHD_ENDPOINT={guest_etcd}\nLOCKSMITHD_LOCK_RETRY=5s\n{}",
                    member.update_conf
                )
                .as_bytes(),
            );
        }
    }
    etc.extend(network_files());
    etc.extend(member.extra.iter().cloned());
    let tree = debian_tree(dir, &etc);
    let pem = dir.join("release.pem");
    tb.key.write_private_pem(&pem).unwrap();
    (tb, tree, pem)
}

/// The reboot semaphore's holders, as `fastpatch locksmithctl status` on the host prints them.
pub fn lock_holders(etcd: &EtcdServer) -> Vec<String> {
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

pub fn etcd() -> EtcdServer {
    EtcdServer::start().unwrap_or_else(|e| panic!("{e}"))
}

/// Version 3.0.0 of the tree: a unit its health gate requires fails on it.
pub fn make_bad(tree: &Path) {
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
