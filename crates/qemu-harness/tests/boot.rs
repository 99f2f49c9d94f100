//! Real boots in QEMU (TCG): the initramfs /init runs the gptprio boot chooser on the disk
//! image, mounts the chosen USR slot and hands over to the stand-in OS, which reports and
//! powers off through isa-debug-exit. Between boots the tests read the GPT of the image.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use fastpatch_boot_init::GuestExit;
use fastpatch_disk::{create, Disk, OpenMode, SlotAttrs, USR_A_INDEX, USR_B_INDEX};
use fastpatch_qemu_harness::{
    boot, format_root, health_file, test_layout, write_usr_image, write_usr_image_with,
    BootOutcome, BootSpec, FsFile, Lab, Machine,
};

const MIB: u64 = 1 << 20;

fn lab() -> &'static Lab {
    Lab::get(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .unwrap_or_else(|e| panic!("QEMU lab setup failed: {e}"))
}

/// A small Flatcar-like disk (the `fastpatch disk create` layout) with version 1 in USR-A and
/// an empty ext4 on ROOT.
fn new_disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    create(&path, &test_layout(), false).expect("creating the disk image");
    write_usr_image_with(&path, USR_A_INDEX, "1", &[health_file(true)])
        .expect("writing version 1 to USR-A");
    format_root(&path, &[]).expect("formatting ROOT");
    path
}

fn attrs(disk: &Path, index: u32) -> SlotAttrs {
    let d = Disk::open(disk, OpenMode::ReadOnly).expect("opening the image after the boot");
    assert!(
        d.health().is_clean(),
        "GPT not clean after the boot: {}",
        d.health().describe()
    );
    d.partition(index).expect("reading the partition").attrs
}

fn sgdisk_verifies(disk: &Path) {
    let out = Command::new("sgdisk")
        .arg("-v")
        .arg(disk)
        .output()
        .expect("running sgdisk -v");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("No problems found"),
        "sgdisk -v {}:\n{text}",
        disk.display()
    );
}

fn run(spec: &BootSpec, expected: GuestExit) -> BootOutcome {
    let outcome = boot(spec).expect("running QEMU");
    eprintln!(
        "boot {} took {:.1} s",
        spec.log.display(),
        outcome.elapsed.as_secs_f64()
    );
    if let Err(report) = outcome.expect_exit(expected) {
        panic!("{report}");
    }
    outcome
}

fn field<'a>(o: &'a BootOutcome, stage: &str, key: &str) -> &'a str {
    o.result(stage)
        .and_then(|r| r.get(key))
        .unwrap_or_else(|| panic!("no {stage} {key}= in the serial log: {}", o.describe()))
}

#[test]
fn boots_usr_a_and_reads_version_1() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let disk = new_disk(dir.path());
    let before = attrs(&disk, USR_A_INDEX);

    let machine_id = "0123456789abcdef0123456789abcdef";
    let initrd = lab
        .initramfs_with(
            "machine-id",
            &[FsFile::new(
                "etc/machine-id",
                format!("{machine_id}\n"),
                0o444,
            )],
        )
        .expect("building an initramfs with /etc/machine-id");
    let mut spec = lab.spec("boots_usr_a", &disk);
    spec.initrd = initrd;
    let o = run(&spec, GuestExit::OsOk);
    assert_eq!(field(&o, "os", "machine_id"), machine_id);
    assert_eq!(field(&o, "os", "boots"), "1");
    assert_eq!(field(&o, "chooser", "slot"), "A");
    assert_eq!(field(&o, "chooser", "partition"), "3");
    assert_eq!(field(&o, "os", "version"), "1", "{}", o.describe());
    assert!(
        o.log.contains("highest priority bootable slot"),
        "{}",
        o.describe()
    );

    // A good slot spends no tries: the table is unchanged.
    assert_eq!(attrs(&disk, USR_A_INDEX), before);
    assert_eq!(attrs(&disk, USR_B_INDEX).priority, 0);
    sgdisk_verifies(&disk);
}

#[test]
fn staged_usr_b_boots_once_then_falls_back_to_a() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let disk = new_disk(dir.path());
    write_usr_image(&disk, USR_B_INDEX, "2").unwrap();
    Disk::open(&disk, OpenMode::ReadWrite)
        .unwrap()
        .stage(USR_B_INDEX)
        .unwrap();
    let staged = attrs(&disk, USR_B_INDEX);
    assert_eq!((staged.tries, staged.successful), (1, false));
    let a_before = attrs(&disk, USR_A_INDEX);

    // Trial boot of B: the chooser spends B's only try on disk before mounting it.
    let o = run(&lab.spec("staged_b_first_boot", &disk), GuestExit::OsOk);
    assert_eq!(field(&o, "chooser", "slot"), "B");
    assert_eq!(field(&o, "chooser", "tries_before"), "1");
    assert_eq!(field(&o, "chooser", "tries_after"), "0");
    assert_eq!(field(&o, "os", "version"), "2");
    assert_eq!(field(&o, "os", "boots"), "1");
    let b = attrs(&disk, USR_B_INDEX);
    assert_eq!(
        b,
        SlotAttrs { tries: 0, ..staged },
        "the tries decrement must be on the disk image after the guest powered off"
    );
    assert_eq!(attrs(&disk, USR_A_INDEX), a_before);
    sgdisk_verifies(&disk);

    // B was never marked good: the next boot falls back to A.
    let o = run(&lab.spec("staged_b_fallback_boot", &disk), GuestExit::OsOk);
    assert_eq!(field(&o, "chooser", "slot"), "A");
    assert_eq!(field(&o, "os", "version"), "1");
    assert!(
        o.log
            .contains("USR-B (partition 4, USR-B): priority=2 tries=0 successful=0 (not bootable"),
        "{}",
        o.describe()
    );
    assert_eq!(attrs(&disk, USR_B_INDEX), b);
    assert_eq!(attrs(&disk, USR_A_INDEX), a_before);
}

/// Serves one HTTP request on the host's loopback; returns the port and the request line.
fn one_shot_http(body: &'static str) -> (u16, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accepting the guest's connection");
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
        }
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        request_line.trim().to_string()
    });
    (port, handle)
}

#[test]
fn updated_slot_reaches_the_host_over_http_and_is_marked_good() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let disk = new_disk(dir.path());
    // The OS program lives in the slot itself (as the engine will): /usr/bin/fastpatch-os.
    let os_program = std::fs::read(&lab.init).unwrap();
    let extra = [
        FsFile::new("bin/fastpatch-os", os_program, 0o755),
        health_file(true),
    ];
    write_usr_image_with(&disk, USR_B_INDEX, "2", &extra).unwrap();
    Disk::open(&disk, OpenMode::ReadWrite)
        .unwrap()
        .stage(USR_B_INDEX)
        .unwrap();
    let (port, server) = one_shot_http("hello-from-host");

    let spec = lab
        .spec("host_http_mark_good", &disk)
        .arg("fastpatch.os=/usr/bin/fastpatch-os")
        .arg(format!("fastpatch.probe=http://10.0.2.2:{port}/v1/ping"))
        .arg("fastpatch.mark_good=1");
    let o = run(&spec, GuestExit::OsOk);
    assert_eq!(field(&o, "os", "version"), "2");
    assert_eq!(field(&o, "os", "probe"), "hello-from-host");
    assert_eq!(field(&o, "os", "health"), "ok");
    assert_eq!(field(&o, "os", "marked_good"), "1");
    assert!(
        o.log.contains("handing over to /usr/bin/fastpatch-os"),
        "{}",
        o.describe()
    );
    assert!(server.join().unwrap().starts_with("GET /v1/ping HTTP/1."));

    let b = attrs(&disk, USR_B_INDEX);
    let a = attrs(&disk, USR_A_INDEX);
    assert_eq!((b.tries, b.successful), (0, true));
    assert!(b.priority > a.priority, "B must be on top: A {a:?} B {b:?}");
    sgdisk_verifies(&disk);
}

#[test]
fn power_cut_right_after_the_chooser_costs_the_try_and_falls_back() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let disk = new_disk(dir.path());
    write_usr_image(&disk, USR_B_INDEX, "2").unwrap();
    Disk::open(&disk, OpenMode::ReadWrite)
        .unwrap()
        .stage(USR_B_INDEX)
        .unwrap();

    // The chooser prints its verdict only after the decrement is durable; cut power there.
    let spec = lab
        .spec("cut_after_chooser", &disk)
        .kill_on("FASTPATCH-RESULT chooser");
    let o = boot(&spec).expect("running QEMU");
    assert!(o.cut, "QEMU was not cut at the chooser: {}", o.describe());
    assert_eq!(field(&o, "chooser", "slot"), "B");
    let b = attrs(&disk, USR_B_INDEX);
    assert_eq!(
        (b.tries, b.successful),
        (0, false),
        "the spent try must be on disk"
    );

    let o = run(
        &lab.spec("cut_after_chooser_next_boot", &disk),
        GuestExit::OsOk,
    );
    assert_eq!(field(&o, "chooser", "slot"), "A");
    assert_eq!(field(&o, "os", "version"), "1");
}

#[test]
fn no_bootable_slot_is_a_clear_guest_failure() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let disk = new_disk(dir.path());
    let mut d = Disk::open(&disk, OpenMode::ReadWrite).unwrap();
    d.set_attrs(
        USR_A_INDEX,
        SlotAttrs {
            priority: 0,
            tries: 0,
            successful: true,
        },
    )
    .unwrap();
    drop(d);

    let o = run(
        &lab.spec("no_bootable_slot", &disk).arg("fastpatch.net=0"),
        GuestExit::NoBootableSlot,
    );
    assert!(
        o.log.contains("no bootable USR slot on /dev/vda"),
        "{}",
        o.describe()
    );
    assert!(o.result("os").is_none(), "no OS may run: {}", o.describe());
}

#[test]
fn a_hung_guest_is_killed_at_the_timeout() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let disk = new_disk(dir.path());
    let spec = lab
        .spec("timeout", &disk)
        .timeout(std::time::Duration::from_millis(300));
    let o = boot(&spec).expect("running QEMU");
    assert!(o.timed_out && o.status.is_none(), "{}", o.describe());
    assert!(
        o.elapsed < std::time::Duration::from_secs(5),
        "{}",
        o.describe()
    );
    assert!(o.describe().contains("timed out"));
}

#[test]
fn unhealthy_update_is_not_marked_good_and_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Machine::new(lab(), dir.path(), "unhealthy_update", "1").unwrap();
    m.cmdline.push("fastpatch.mark_good=1".into());
    write_usr_image_with(&m.disk, USR_B_INDEX, "3", &[health_file(false)]).unwrap();
    Disk::open(&m.disk, OpenMode::ReadWrite)
        .unwrap()
        .stage(USR_B_INDEX)
        .unwrap();

    // Version 3 boots, its health gate fails: no mark, a reboot (QEMU exits 0).
    let o = m.boot().expect("running QEMU");
    assert!(
        o.rebooted(),
        "the guest must ask for a reboot: {}",
        o.describe()
    );
    assert_eq!(field(o, "os", "version"), "3");
    assert_eq!(field(o, "os", "health"), "fail");
    let b = m.attrs(USR_B_INDEX).unwrap();
    assert_eq!((b.tries, b.successful), (0, false));

    // The next boot falls back to version 1, healthy, which stays the good slot on top.
    let o = m.boot().expect("running QEMU");
    if let Err(report) = o.expect_exit(GuestExit::OsOk) {
        panic!("{report}");
    }
    assert_eq!(field(o, "chooser", "slot"), "A");
    assert_eq!(field(o, "os", "version"), "1");
    assert_eq!(field(o, "os", "marked_good"), "1");
    assert!(o.log_path.ends_with("unhealthy_update-2.log"));
    // Marking A good puts it on top; B stays spent and never successful.
    let (a, b_after) = (m.attrs(USR_A_INDEX).unwrap(), m.attrs(USR_B_INDEX).unwrap());
    assert!(
        a.successful && a.priority > b_after.priority,
        "A {a:?} B {b_after:?}"
    );
    assert_eq!((b_after.tries, b_after.successful), (b.tries, b.successful));
    sgdisk_verifies(&m.disk);
}

#[test]
fn an_os_program_that_exits_decides_the_verdict_through_init() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let disk = new_disk(dir.path());
    write_usr_image_with(&disk, USR_A_INDEX, "1", &[health_file(false)]).unwrap();

    // The OS here is `/init health` (a child of PID 1, as the engine will be): it exits 1 in
    // an unhealthy slot, and the init turns that into the OsFailed verdict.
    let spec = lab
        .spec("os_exits", &disk)
        .arg("fastpatch.os=/init")
        .arg("fastpatch.os_arg=health");
    let o = run(&spec, GuestExit::OsFailed);
    assert_eq!(field(&o, "os-exit", "status"), "1");
    assert!(
        o.log.contains("fastpatch-health: unhealthy"),
        "{}",
        o.describe()
    );
}

#[test]
fn a_corrupt_primary_gpt_is_repaired_by_the_chooser_at_boot() {
    use std::os::unix::fs::FileExt;
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let disk = new_disk(dir.path());
    write_usr_image(&disk, USR_B_INDEX, "2").unwrap();
    Disk::open(&disk, OpenMode::ReadWrite)
        .unwrap()
        .stage(USR_B_INDEX)
        .unwrap();
    // Scribble over the primary header (LBA 1): only the backup copy is valid now.
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&[0xa5; 512], 512).unwrap();
    drop(f);
    let d = Disk::open(&disk, OpenMode::ReadOnly).unwrap();
    assert!(!d.health().is_clean());
    drop(d);

    let o = run(&lab.spec("corrupt_primary", &disk), GuestExit::OsOk);
    assert!(
        o.log.contains("primary GPT is corrupt") && o.log.contains("rebuilt from the backup"),
        "the repair must be reported on the console: {}",
        o.describe()
    );
    // The backup's choice (staged B) was honoured, and both copies are whole again.
    assert_eq!(field(&o, "chooser", "slot"), "B");
    let b = attrs(&disk, USR_B_INDEX);
    assert_eq!((b.tries, b.successful), (0, false));
    sgdisk_verifies(&disk);
}

#[test]
fn a_disk_without_gpt_fails_the_init_with_a_clear_message() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("blank.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();

    let spec = lab.spec("no_gpt", &disk).arg("fastpatch.net=0");
    let o = run(&spec, GuestExit::InitFailed);
    assert!(o.log.contains("has no valid GPT"), "{}", o.describe());
    assert!(o.result("chooser").is_none() && o.result("os").is_none());
}
