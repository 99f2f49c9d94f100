//! System extensions updated with the OS on real boots (QEMU, TCG): a machine on 1.0.0 with
//! the extension `demo` enabled (`/etc/flatcar/enabled-sysext.conf`) and its 1.0.0 image on
//! ROOT is offered 2.0.0 with `flatcar-demo.gz` after the payload. The engine places the
//! 2.0.0 image before it stages USR-B; each boot links the booted version's image into
//! `/etc/extensions/` (the engine at start, in this stand-in OS); after a rollback to A the
//! 1.0.0 image is linked again. The images live on ROOT (`/var`), since this OS's /etc is
//! in the initramfs.

use std::path::Path;
use std::time::Duration;

use fastpatch_disk::{Disk, OpenMode, USR_A_INDEX, USR_B_INDEX};
use fastpatch_qemu_harness::{BootOutcome, FsFile, Lab, Machine, Testbed, TEST_ENGINE_LAYER};

const BOOT_TIMEOUT: Duration = Duration::from_secs(150);
/// Where the images live on ROOT (the guest's /var/lib/flatcar/sysext).
const ON_ROOT: &str = "/lib/flatcar/sysext";
const LINKED: &str = "system extension linked for the booted version";

fn lab() -> &'static Lab {
    Lab::get(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .unwrap_or_else(|e| panic!("QEMU lab setup failed: {e}"))
}

fn image(seed: u8) -> Vec<u8> {
    (0..256 * 1024)
        .map(|i: usize| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn log_name(o: &BootOutcome) -> String {
    o.log_path.display().to_string()
}

/// The serial log's link line names the image of `version`.
fn expect_linked(o: &BootOutcome, version: &str) {
    let line = o
        .log
        .lines()
        .find(|l| l.contains(LINKED) && l.contains("flatcar-demo.raw"))
        .unwrap_or_else(|| panic!("no link line in {}: {}", log_name(o), o.describe()));
    assert!(
        line.contains(&format!(
            "/var/lib/flatcar/sysext/flatcar-demo-{version}.raw"
        )),
        "{line}"
    );
}

fn on_root(m: &Machine, version: &str) -> Option<Vec<u8>> {
    m.root_file(&format!("{ON_ROOT}/flatcar-demo-{version}.raw"))
        .expect("reading ROOT")
}

#[test]
fn an_extension_follows_the_os_through_an_update_and_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let tb = Testbed::new(lab(), dir.path()).unwrap_or_else(|e| panic!("testbed: {e}"));
    let layer = format!("{TEST_ENGINE_LAYER}\n[extensions]\ndir = \"/var/lib/flatcar/sysext\"\n");
    let v1 = tb.version("1.0.0", true);
    let mut m = tb
        .machine("sysext", &v1, &layer)
        .expect("creating the machine");
    let mut etc = tb.etc_files(&layer).unwrap();
    etc.push(FsFile::new(
        "etc/flatcar/enabled-sysext.conf",
        "demo\n",
        0o644,
    ));
    m.with_initramfs_files(&etc).unwrap();
    let (demo1, demo2) = (image(1), image(2));
    m.with_root_files(&[FsFile::new(
        format!("{}/flatcar-demo-1.0.0.raw", ON_ROOT.trim_start_matches('/')),
        demo1.clone(),
        0o644,
    )])
    .unwrap();
    let v2 = tb.version("2.0.0", true);
    tb.release_with_extensions(&v2, m.usr_size().unwrap(), &[("flatcar-demo.gz", &demo2)])
        .expect("releasing 2.0.0 with its extension");

    // Boot 1 (A, 1.0.0): 1.0.0's image is linked; the update places 2.0.0's before staging B.
    let spec = m.next_spec().timeout(BOOT_TIMEOUT);
    let o = m.run(&spec).expect("running QEMU").clone();
    assert!(
        o.rebooted(),
        "the engine reboots into the update: {}",
        o.describe()
    );
    expect_linked(&o, "1.0.0");
    assert!(
        on_root(&m, "2.0.0") == Some(demo2.clone()),
        "2.0.0's image is on ROOT"
    );
    assert!(on_root(&m, "1.0.0") == Some(demo1.clone()), "1.0.0's stays");
    assert_eq!(m.attrs(USR_B_INDEX).unwrap().tries, 1, "B is staged");

    // Boot 2 (B, 2.0.0): its image is linked; once good, the fallback's image stays.
    let spec = m.next_spec().timeout(BOOT_TIMEOUT);
    let o = m
        .run_until(&spec, &mut || tb.status().unwrap() == "complete")
        .expect("running QEMU")
        .clone();
    assert!(
        o.stopped,
        "the server never recorded complete: {}",
        o.describe()
    );
    expect_linked(&o, "2.0.0");
    assert!(
        on_root(&m, "1.0.0").is_some(),
        "the fallback keeps its image"
    );

    // A rollback (as `fastpatch rollback` does: A, still good, goes on top) and boot 3: 1.0.0
    // and its image again. The boot ends once the link is made.
    Disk::open(&m.disk, OpenMode::ReadWrite)
        .and_then(|mut d| d.prioritize(USR_A_INDEX, None))
        .expect("rolling back to A");
    let spec = m.next_spec().timeout(BOOT_TIMEOUT).kill_on(LINKED);
    let o = m.run(&spec).expect("running QEMU").clone();
    expect_linked(&o, "1.0.0");
}
