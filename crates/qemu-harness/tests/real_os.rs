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

use fastpatch_disk::{Disk, OpenMode, SlotAttrs, USR_A_INDEX, USR_B_INDEX};
use fastpatch_image::BuildOptions;
use fastpatch_qemu_harness::{boot, BootOutcome, BootSpec, FsFile, Lab, SigningKey};

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
systemctl poweroff --no-block
"#;

const REPORT_UNIT: &str = "[Unit]\nDescription=fastpatch test: report the boot\nAfter=basic.target\n\n[Service]\nType=oneshot\nExecStart=/usr/lib/fastpatch-test/report\n\n[Install]\nWantedBy=multi-user.target\n";

/// The Debian tree with the report unit, unpacked under `dir`.
fn debian_tree(dir: &Path) -> PathBuf {
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
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "../fastpatch-test-report.service",
        wants.join("fastpatch-test-report.service"),
    )
    .unwrap();
    tree
}

fn result<'a>(o: &'a BootOutcome, stage: &str, key: &str) -> &'a str {
    o.result(stage)
        .and_then(|r| r.get(key))
        .unwrap_or_else(|| panic!("no {stage} {key} in the guest's results\n{}", o.describe()))
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
    let lab = lab();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = debian_tree(dir.path());
    let key = SigningKey::generate().unwrap();
    key.write_private_pem(&dir.path().join("release.pem"))
        .unwrap();
    let mut opts = BuildOptions::new(tree, "1.0.0".into(), dir.path().join("release"));
    opts.keys = vec![dir.path().join("release.pem")];
    opts.init = lab.init.clone();
    opts.fastpatch_binary = lab.engine().unwrap().to_path_buf();
    let started = Instant::now();
    let release = fastpatch_image::build(&opts, &mut |s| eprintln!("image: {s}")).unwrap();
    eprintln!(
        "built 1.0.0 in {:.1} s: USR image {} MiB",
        started.elapsed().as_secs_f64(),
        release.usr_image_bytes / MIB
    );
    let disk = dir.path().join("release/disk.img");
    let chooser = lab
        .initramfs_with(
            "real-os-chooser",
            &[FsFile::new(
                "lib/fastpatch/keys/release.pem",
                key.public_pem(),
                0o644,
            )],
        )
        .unwrap();
    let spec = |name: &str| {
        let mut s = BootSpec::new(
            &lab.assets.kernel,
            &chooser,
            &disk,
            &lab.log_dir.join(format!("{name}.log")),
        )
        .arg("fastpatch.kexec=1")
        .timeout(Duration::from_secs(600));
        s.memory_mib = 1024;
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
    assert!(o.rebooted() || o.status == Some(0), "{}", o.describe());

    // 2. USR-B staged with a seal that does not verify: the chooser refuses it and boots A.
    let image = dir.path().join("release/usr.img");
    let mut bytes = std::fs::read(&image).unwrap();
    let at = release.usr_fs_bytes as usize + 16;
    let pos = bytes[at..at + 600]
        .windows(7)
        .position(|w| w == b"\"1.0.0\"")
        .unwrap();
    bytes[at + pos + 1] = b'9';
    let d = Disk::open(&disk, OpenMode::ReadOnly).unwrap();
    let (b_at, _) = d.partition_byte_range(USR_B_INDEX).unwrap();
    drop(d);
    let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.seek(SeekFrom::Start(b_at)).unwrap();
    f.write_all(&bytes).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut d = Disk::open(&disk, OpenMode::ReadWrite).unwrap();
    d.stage(USR_B_INDEX).unwrap();
    drop(d);
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
}
