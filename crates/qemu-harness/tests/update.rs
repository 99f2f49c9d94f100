//! The update scenarios of issue 9 on real boots: QEMU (TCG) boots a disk image whose OS is the
//! real fastpatch engine (static binary inside each version's USR image, started by the
//! initramfs /init after its gptprio boot chooser), and the engine updates from the real
//! fastpatch-server running in this test process on the host (the guest reaches it at
//! 10.0.2.2). Between boots the tests read the GPT and the slots of the image and what the
//! server recorded. Serial logs are kept in `target/qemu-logs/<scenario>-<boot>.log`.

use std::path::Path;
use std::time::Duration;

use fastpatch_disk::{SlotAttrs, USR_A_INDEX, USR_B_INDEX};
use fastpatch_qemu_harness::{BootOutcome, Lab, Machine, Testbed, GROUP, TEST_ENGINE_LAYER};

const MIB: usize = 1 << 20;

/// A whole boot of an update scenario (kernel, init, engine, check, download, install) takes
/// 20-40 s under TCG on a loaded 2-core machine; anything past this is a hang.
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

fn lab() -> &'static Lab {
    Lab::get(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .unwrap_or_else(|e| panic!("QEMU lab setup failed: {e}"))
}

fn testbed(dir: &Path) -> Testbed<'static> {
    Testbed::new(lab(), dir).unwrap_or_else(|e| panic!("testbed: {e}"))
}

fn attrs(m: &Machine, index: u32) -> SlotAttrs {
    m.attrs(index).expect("reading the GPT of the image")
}

fn field<'a>(o: &'a BootOutcome, stage: &str, key: &str) -> &'a str {
    o.result(stage)
        .and_then(|r| r.get(key))
        .unwrap_or_else(|| panic!("no {stage} {key}= in the serial log: {}", o.describe()))
}

/// Asserts the boot asked for a reboot by itself (the engine's reboot command).
fn expect_reboot(o: &BootOutcome) {
    assert!(
        o.rebooted(),
        "the guest should have rebooted: {}",
        o.describe()
    );
}

/// Asserts the harness ended the boot because the awaited state was reached.
fn expect_stopped(o: &BootOutcome, what: &str) {
    assert!(o.stopped, "{what} never happened: {}", o.describe());
}

fn expect_log(o: &BootOutcome, text: &str) {
    assert!(
        o.log.contains(text),
        "{text:?} not in the log: {}",
        o.describe()
    );
}

/// Boots once, up to the guest's own end (reboot or power-off).
fn boot_to_end(m: &mut Machine) -> BootOutcome {
    let spec = m.next_spec().timeout(BOOT_TIMEOUT);
    let o = m.run(&spec).expect("running QEMU").clone();
    eprintln!(
        "{} took {:.1} s",
        o.log_path.display(),
        o.elapsed.as_secs_f64()
    );
    o
}

/// Boots until `done` holds on the host (the engine runs forever), or the guest ends.
fn boot_until(m: &mut Machine, done: &mut dyn FnMut() -> bool) -> BootOutcome {
    let spec = m.next_spec().timeout(BOOT_TIMEOUT);
    let o = m.run_until(&spec, done).expect("running QEMU").clone();
    eprintln!(
        "{} took {:.1} s",
        o.log_path.display(),
        o.elapsed.as_secs_f64()
    );
    o
}

/// Boot 1 of a machine on version 1 with `image` published: the engine downloads, installs
/// and stages it on USR-B, then reboots by itself.
fn first_boot_stages_b(tb: &Testbed, m: &mut Machine, image: &Path, version: &str) {
    let a_before = attrs(m, USR_A_INDEX);
    let o = boot_to_end(m);
    expect_reboot(&o);
    assert_eq!(field(&o, "chooser", "slot"), "A");
    expect_log(&o, "UPDATE_STATUS_DOWNLOADING");
    expect_log(&o, "UPDATE_STATUS_UPDATED_NEED_REBOOT");
    let (a, b) = (attrs(m, USR_A_INDEX), attrs(m, USR_B_INDEX));
    assert_eq!(a, a_before, "the booted slot's attributes are untouched");
    assert!(
        !b.successful && b.tries == 1 && b.priority > a.priority,
        "B must be staged for one trial boot above A: A {a:?} B {b:?}"
    );
    let want = std::fs::read(image).expect("reading the released image");
    let slot = m.partition_bytes(USR_B_INDEX).expect("reading USR-B");
    assert!(
        slot == want,
        "USR-B must hold exactly the released {version} image"
    );
    let inst = tb.instance().unwrap().expect("the machine checked in");
    assert_eq!(inst.version, "1.0.0");
    assert_eq!(inst.status.as_str(), "installed", "{inst:?}");
    assert_eq!(tb.events().unwrap(), ["13/1", "14/1", "3/1"]);
}

#[test]
fn good_update_boots_b_marks_it_good_and_the_server_records_complete() {
    let dir = tempfile::tempdir().unwrap();
    let tb = testbed(dir.path());
    let v1 = tb.version("1.0.0", true);
    let mut m = tb
        .machine("update_good", &v1, TEST_ENGINE_LAYER)
        .expect("creating the machine");
    let v2 = tb.version("2.0.0", true);
    let image = tb
        .release(&v2, m.usr_size().unwrap())
        .expect("releasing 2.0.0");

    first_boot_stages_b(&tb, &mut m, &image, "2.0.0");

    // Boot 2: the chooser spends B's try, 2.0.0 passes its health gate and is marked good,
    // and the engine's next check reports 3/2; the harness switches off once the server has it.
    let o = boot_until(&mut m, &mut || tb.status().unwrap() == "complete");
    expect_stopped(&o, "the server recording 3/2 (complete)");
    assert_eq!(field(&o, "chooser", "slot"), "B");
    assert_eq!(field(&o, "chooser", "tries_before"), "1");
    assert_eq!(field(&o, "chooser", "tries_after"), "0");
    expect_log(&o, "health gate passed");
    let (a, b) = (attrs(&m, USR_A_INDEX), attrs(&m, USR_B_INDEX));
    assert!(
        b.successful && b.tries == 0 && b.priority > a.priority,
        "B must be good and on top: A {a:?} B {b:?}"
    );
    assert!(a.successful, "A stays the good fallback: {a:?}");
    let inst = tb.instance().unwrap().unwrap();
    assert_eq!(
        (inst.version.as_str(), inst.status.as_str()),
        ("2.0.0", "complete")
    );
    assert_eq!(tb.events().unwrap(), ["13/1", "14/1", "3/1", "3/2"]);
    let newest = &tb
        .server
        .events(fastpatch_qemu_harness::MACHINE_ID)
        .unwrap()[0];
    assert_eq!(newest.previous_version.as_deref(), Some("1.0.0"));
    let history = tb
        .server
        .status_history(fastpatch_qemu_harness::MACHINE_ID)
        .unwrap();
    assert_eq!(
        history.last().map(String::as_str),
        Some("complete"),
        "{history:?}"
    );
}

#[test]
fn bad_update_is_not_marked_good_falls_back_and_halts_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let tb = testbed(dir.path());
    let v1 = tb.version("1.0.0", true);
    let mut m = tb
        .machine("update_bad", &v1, TEST_ENGINE_LAYER)
        .expect("creating the machine");
    let v3 = tb.version("3.0.0", false);
    let image = tb
        .release(&v3, m.usr_size().unwrap())
        .expect("releasing 3.0.0");

    first_boot_stages_b(&tb, &mut m, &image, "3.0.0");
    let a_good = attrs(&m, USR_A_INDEX);

    // Boot 2: 3.0.0 boots on its one try; its health check fails until the gate's timeout,
    // so it is not marked good and the engine reboots.
    let o = boot_to_end(&mut m);
    expect_reboot(&o);
    assert_eq!(field(&o, "chooser", "slot"), "B");
    assert_eq!(field(&o, "chooser", "tries_after"), "0");
    expect_log(&o, "fastpatch-health: unhealthy");
    expect_log(&o, "health gate failed");
    let b = attrs(&m, USR_B_INDEX);
    assert_eq!(
        (b.tries, b.successful),
        (0, false),
        "B not marked good: {b:?}"
    );
    assert_eq!(attrs(&m, USR_A_INDEX), a_good);

    // Boot 3: the chooser falls back to A (B has no tries and was never good); 1.0.0's
    // engine reports the rollback (3/0, errorcode 44) and safe mode halts the group.
    let halted = || tb.server.group(GROUP).unwrap().is_some_and(|g| g.halted);
    let o = boot_until(&mut m, &mut || {
        tb.instance()
            .unwrap()
            .is_some_and(|i| i.last_error_code == Some(44))
            && halted()
    });
    expect_stopped(
        &o,
        "the server recording the rollback and halting the group",
    );
    assert_eq!(field(&o, "chooser", "slot"), "A");
    expect_log(
        &o,
        "USR-B (partition 4, USR-B): priority=2 tries=0 successful=0 (not bootable",
    );
    let inst = tb.instance().unwrap().unwrap();
    assert_eq!(inst.version, "1.0.0");
    assert_eq!(inst.status.as_str(), "error");
    assert_eq!(tb.events().unwrap(), ["13/1", "14/1", "3/1", "3/0:44"]);
    let group = tb.server.group(GROUP).unwrap().unwrap();
    assert!(
        group
            .halted_reason
            .as_deref()
            .unwrap_or("")
            .contains("rolled back"),
        "{:?}",
        group.halted_reason
    );
    let (a, b) = (attrs(&m, USR_A_INDEX), attrs(&m, USR_B_INDEX));
    assert!(a.successful && a.bootable(), "A is the good slot: {a:?}");
    assert_eq!((b.tries, b.successful), (0, false), "B stays spent: {b:?}");
}

/// How many of the image's non-empty 1 MiB chunks after the first the slot already holds, of
/// how many.
/// The checkpoint line after the installer synced operations 0-3 (the first four MiB).
const CUT_AT_CHECKPOINT: &str = "next_op=4";

fn chunks_written(slot: &[u8], image: &[u8]) -> (usize, usize) {
    let mut written = 0;
    let mut total = 0;
    for (i, want) in image.chunks(MIB).enumerate().skip(1) {
        if want.iter().all(|&b| b == 0) {
            continue;
        }
        total += 1;
        if slot.get(i * MIB..i * MIB + want.len()) == Some(want) {
            written += 1;
        }
    }
    (written, total)
}

#[test]
fn power_cut_during_staging_keeps_a_and_the_update_restarts_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let tb = testbed(dir.path());
    let v1 = tb.version("1.0.0", true);
    // Boot 1 stages slowly (4 MiB/s) with a resume checkpoint (a sync of the slot) every MiB
    // of payload, so the power cut lands mid-write after the first checkpoint.
    let slow = format!(
        "{}\n[limits]\ndisk_bytes_per_sec = {}\n",
        TEST_ENGINE_LAYER.replace(
            "[download]\n",
            &format!("[download]\ncheckpoint_bytes = {MIB}\n")
        ),
        4 * MIB
    );
    assert!(slow.contains("checkpoint_bytes"), "{slow}");
    let mut m = tb
        .machine("update_power_cut", &v1, &slow)
        .expect("creating the machine");
    let v2 = tb.version("2.0.0", true);
    let image_path = tb
        .release(&v2, m.usr_size().unwrap())
        .expect("releasing 2.0.0");
    let image = std::fs::read(&image_path).unwrap();
    let a_good = attrs(&m, USR_A_INDEX);

    // Boot 1: the installer's checkpoints are logged (debug); the power is cut just after the
    // one that synced the slot's first four operations (4 MiB, the rate limiter's burst), while
    // the other 28 MiB stream onto USR-B at 4 MiB/s.
    let mut spec = m
        .next_spec()
        .timeout(BOOT_TIMEOUT)
        .kill_after(CUT_AT_CHECKPOINT, Duration::from_millis(200));
    spec.cmdline
        .push("fastpatch.log=info,fastpatch_payload::install=debug".to_string());
    let o = m.run(&spec).expect("running QEMU").clone();
    assert!(o.cut, "the power cut did not happen: {}", o.describe());
    assert!(
        !o.log.contains("payload installed and verified"),
        "the install finished before the cut: {}",
        o.describe()
    );
    let slot = m.partition_bytes(USR_B_INDEX).unwrap();
    let (written, total) = chunks_written(&slot, &image);
    eprintln!("power cut with {written} of {total} non-empty chunks on USR-B");
    assert!(
        written > 0 && written < total,
        "the cut must land mid-write: {written} of {total} chunks on USR-B"
    );
    assert!(
        slot[..MIB].iter().all(|&b| b == 0),
        "USR-B's first MiB (the superblock) stays zero until the install verified"
    );
    assert_eq!(attrs(&m, USR_A_INDEX), a_good);
    assert_eq!(
        attrs(&m, USR_B_INDEX).priority,
        0,
        "nothing was staged: B cannot boot"
    );

    // Boot 2, without the slowdown: the old slot boots, healthy; the engine resumes the
    // update from its last durable checkpoint, finishes, verifies and stages it, and reboots.
    m.with_initramfs_files(&tb.etc_files(TEST_ENGINE_LAYER).unwrap())
        .unwrap();
    let o = boot_to_end(&mut m);
    expect_reboot(&o);
    assert_eq!(field(&o, "chooser", "slot"), "A");
    expect_log(&o, "booted slot already marked good");
    // From the last checkpoint that reached the disk before the cut, not from scratch.
    expect_log(&o, "resuming install");
    expect_log(&o, "UPDATE_STATUS_UPDATED_NEED_REBOOT");
    assert!(
        m.partition_bytes(USR_B_INDEX).unwrap() == image,
        "USR-B must hold exactly the released image"
    );
    let b = attrs(&m, USR_B_INDEX);
    assert!(!b.successful && b.tries == 1, "B staged: {b:?}");

    // Boot 3: the update is complete.
    let o = boot_until(&mut m, &mut || tb.status().unwrap() == "complete");
    expect_stopped(&o, "the server recording 3/2 (complete)");
    assert_eq!(field(&o, "chooser", "slot"), "B");
    let b = attrs(&m, USR_B_INDEX);
    assert!(b.successful, "B marked good: {b:?}");
    assert_eq!(tb.instance().unwrap().unwrap().version, "2.0.0");
}

/// A machine on 1.0.0 whose USR-A holds exactly 1.0.0's released image, and a server that
/// holds the release key: 1.0.0 and then 2.0.0 are published on the stable channel, and the
/// server makes the delta 1.0.0 → 2.0.0 itself. Returns the testbed, the machine, 2.0.0's
/// image and the delta.
fn delta_testbed<'a>(
    dir: &Path,
    name: &str,
    engine_layer: &str,
    change_usr_a: bool,
) -> (
    Testbed<'a>,
    Machine<'a>,
    Vec<u8>,
    fastpatch_server::store::DeltaRow,
) {
    let tb = Testbed::with_deltas(lab(), dir).unwrap_or_else(|e| panic!("testbed: {e}"));
    let v1 = tb.version("1.0.0", true);
    let m = tb
        .machine(name, &v1, engine_layer)
        .expect("creating the machine");
    let slot = m.usr_size().unwrap();
    let mut old = std::fs::read(tb.release(&v1, slot).expect("releasing 1.0.0")).unwrap();
    if change_usr_a {
        // A byte changed by hand in the slot's last block (free space of the filesystem).
        let last = old.len() - 1;
        old[last] ^= 0x01;
    }
    m.write_partition(USR_A_INDEX, &old).expect("writing USR-A");
    let v2 = tb.version("2.0.0", true);
    let new_path = tb.release(&v2, slot).expect("releasing 2.0.0");
    let new = std::fs::read(new_path).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let delta = loop {
        let made = tb.server.deltas().unwrap();
        if let Some(d) = made.into_iter().find(|d| d.source_version == "1.0.0") {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server made no delta in 180 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        delta.state,
        fastpatch_server::store::DeltaState::Ready,
        "{delta:?}"
    );
    (tb, m, new, delta)
}

/// Waits (up to 20 s: counts are written every 5 s) until `read` gives `want`.
fn wait_served(what: &str, want: i64, read: &mut dyn FnMut() -> i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = read();
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {got} bytes served, want {want}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Boot 2 of an update to 2.0.0: B boots on its try, passes the health gate, is marked good,
/// and the server records complete.
fn second_boot_marks_b_good(tb: &Testbed, m: &mut Machine) {
    let o = boot_until(m, &mut || tb.status().unwrap() == "complete");
    expect_stopped(&o, "the server recording 3/2 (complete)");
    assert_eq!(field(&o, "chooser", "slot"), "B");
    expect_log(&o, "health gate passed");
    let b = attrs(m, USR_B_INDEX);
    assert!(b.successful, "B must be marked good: {b:?}");
    let inst = tb.instance().unwrap().unwrap();
    assert_eq!(
        (inst.version.as_str(), inst.status.as_str()),
        ("2.0.0", "complete")
    );
}

#[test]
fn delta_update_from_the_booted_slot_boots_b_and_is_marked_good() {
    let dir = tempfile::tempdir().unwrap();
    let (tb, mut m, new, delta) =
        delta_testbed(dir.path(), "update_delta", TEST_ENGINE_LAYER, false);
    let full = tb.server.package_served_bytes().unwrap();
    let full_size = {
        let pkgs = tb
            .server
            .block_on(tb.server.store().packages(fastpatch_omaha::FLATCAR_APP_ID))
            .unwrap();
        pkgs.iter().find(|p| p.version == "2.0.0").unwrap().size
    };
    assert!(
        delta.size < full_size / 4,
        "delta {} bytes, full {full_size}",
        delta.size
    );
    assert!(full.iter().all(|(_, n)| *n == 0), "{full:?}");

    // Boot 1: the engine asks for a delta, gets it, applies it against USR-A onto USR-B.
    let o = boot_to_end(&mut m);
    expect_reboot(&o);
    expect_log(&o, "UPDATE_STATUS_UPDATED_NEED_REBOOT");
    let slot = m.partition_bytes(USR_B_INDEX).expect("reading USR-B");
    assert!(
        slot == new,
        "USR-B must hold exactly the released 2.0.0 image"
    );
    assert_eq!(tb.events().unwrap(), ["13/1", "14/1", "3/1"]);
    // What crossed the wire: the delta, whole, and no byte of the full payload.
    wait_served("the delta", delta.size, &mut || {
        tb.server
            .deltas()
            .unwrap()
            .into_iter()
            .find(|d| d.id == delta.id)
            .map_or(0, |d| d.served_bytes)
    });
    let full = tb.server.package_served_bytes().unwrap();
    assert!(full.iter().all(|(_, n)| *n == 0), "{full:?}");

    second_boot_marks_b_good(&tb, &mut m);
}

/// The test layer, checking again 5 s after a failed attempt.
fn retry_soon_layer() -> String {
    let layer = TEST_ENGINE_LAYER.replace(
        "initial_fuzz = 0\n",
        "initial_fuzz = 0\ninterval = 5\ninterval_fuzz = 0\n",
    );
    assert!(layer.contains("interval = 5"), "{layer}");
    layer
}

#[test]
fn a_changed_booted_slot_refuses_the_delta_and_the_full_payload_updates_it() {
    let dir = tempfile::tempdir().unwrap();
    let (tb, mut m, new, _delta) = delta_testbed(
        dir.path(),
        "update_delta_changed",
        &retry_soon_layer(),
        true,
    );
    // Safe mode would halt the group at the failure; the retry is what is tested here.
    let mut g = tb.server.group(GROUP).unwrap().unwrap();
    g.safe_mode = false;
    tb.server.set_group(&g).unwrap();
    let a_before = m.partition_bytes(USR_A_INDEX).unwrap();

    // Boot 1: the delta does not fit USR-A (error 20, nothing written to USR-B); 5 s later
    // the engine asks for the full payload, installs it and reboots.
    let o = boot_to_end(&mut m);
    expect_reboot(&o);
    expect_log(&o, "UPDATE_STATUS_UPDATED_NEED_REBOOT");
    let events = tb
        .server
        .events(fastpatch_qemu_harness::MACHINE_ID)
        .unwrap();
    let codes: Vec<u32> = events
        .iter()
        .filter_map(|e| e.error_code)
        .map(|c| fastpatch_omaha::ErrorCode(c as u32).base())
        .collect();
    assert!(codes.contains(&20), "{:?}", tb.events().unwrap());
    assert_eq!(tb.events().unwrap().last().map(String::as_str), Some("3/1"));
    assert!(
        m.partition_bytes(USR_A_INDEX).unwrap() == a_before,
        "the booted slot is never written"
    );
    let slot = m.partition_bytes(USR_B_INDEX).expect("reading USR-B");
    assert!(
        slot == new,
        "USR-B must hold exactly the released 2.0.0 image"
    );
    let full_size = {
        let pkgs = tb
            .server
            .block_on(tb.server.store().packages(fastpatch_omaha::FLATCAR_APP_ID))
            .unwrap();
        pkgs.into_iter().find(|p| p.version == "2.0.0").unwrap()
    };
    wait_served("the full payload", full_size.size, &mut || {
        tb.server
            .package_served_bytes()
            .unwrap()
            .into_iter()
            .find(|(id, _)| *id == full_size.id)
            .map_or(0, |(_, n)| n)
    });

    second_boot_marks_b_good(&tb, &mut m);
}
