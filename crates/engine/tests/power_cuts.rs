//! Power cuts across a whole update cycle (issue 18): install + stage on the old version, the
//! boot chooser's try, the first boot of the new version and its mark-good, cut at random
//! points. A cut is either a fail-point at a durability point (the installer's, the engine
//! state file's, the partition table's; armed at a random hit) or a cut after a random number
//! of bytes written to the slot and the partition table together (the write that crosses the
//! budget lands only its first bytes, nothing lands after it).
//!
//! After each cut the machine powers on again and runs what a real boot runs: the chooser on
//! the disk as the cut left it, the engine's restart logic (`Engine::start` on the state file
//! and the slot attributes), its decisions performed by a small synchronous shell, and the
//! health gate's mark-good. It keeps booting until the new version runs and is marked good.
//! Checked at every boot: the table reads, the slot the chooser picks holds exactly a complete
//! image (the old one in A, or the whole new one in B), and A never changes.
//!
//! `FASTPATCH_POWER_CUTS` sets the number of cuts (default 50, the test command's sample;
//! `scripts/power-cuts` runs 1,000) and `FASTPATCH_POWER_CUT_SEED` the random seed.
#![cfg(feature = "failpoints")]

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fastpatch_boot_control::{BootControl, GptBootControl, Slot};
use fastpatch_disk::{power, Disk, LayoutSpec, OpenMode, USR_A_INDEX, USR_B_INDEX};
use fastpatch_engine::daemon::passive_staged;
use fastpatch_engine::machine::{Action, BootFacts, CheckReply, Engine, Input, UpdateOffer};
use fastpatch_engine::persist;
use fastpatch_engine::report::{ErrorCode, Event};
use fastpatch_engine::status::UpdateStatus;
use fastpatch_payload::install::{FileRange, InstallOptions, InstallTarget, Installer};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const IMAGE_LEN: usize = 3 * MIB as usize;
const OLD: &str = "1.0.0";
const NEW: &str = "2.0.0";
/// More boots than this without reaching the new version means the machine is stuck.
const MAX_BOOTS: u32 = 8;

/// A cut: where the power goes off.
#[derive(Debug, Clone)]
enum Cut {
    /// After this many bytes written to the slot and the partition table together.
    Bytes(u64),
    /// At the `hit`-th pass (0-based) through this fail-point.
    Point { name: &'static str, hit: u64 },
}

/// The power went off: the boot ends here.
#[derive(Debug)]
struct PowerOff(String);

/// Deterministic randomness for the sweep (splitmix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    // Zero runs and repeats, so the payload has ZERO and small operations too.
    v[MIB as usize..MIB as usize + 300_000].fill(0);
    v
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Where the slot writes fell in the sequence of all bytes written (start, length), recorded
/// in the dry run; the rest of the sequence is partition-table writes.
static SLOT_WRITES: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

/// The slot writes of the installer, spending the same power budget as the table writes.
struct CutTarget(FileRange);
impl InstallTarget for CutTarget {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = power::bytes_written();
        let allowed = power::take(buf.len());
        SLOT_WRITES.lock().unwrap().push((start, allowed as u64));
        if allowed < buf.len() {
            let _ = self.0.write_at(&buf[..allowed], offset);
            return Err(io::Error::other("power cut inside a slot write"));
        }
        self.0.write_at(buf, offset)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        if power::is_cut() {
            return Err(io::Error::other("power is off"));
        }
        self.0.sync()
    }
    fn identity(&self) -> String {
        self.0.identity()
    }
}

/// What every machine starts from: a disk with the old image in A, and the new release.
struct Fixture {
    dir: tempfile::TempDir,
    template: PathBuf,
    old_image: Vec<u8>,
    new_image: Vec<u8>,
    payload: Vec<u8>,
    key: rsa::RsaPublicKey,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template.img");
    let spec = LayoutSpec {
        total_size: 24 * MIB,
        efi_size: MIB,
        bios_boot_size: MIB,
        usr_size: 4 * MIB,
        oem_size: MIB,
        min_root_size: MIB,
        ..LayoutSpec::default()
    };
    let disk = fastpatch_disk::create(&template, &spec, true).expect("creating the disk");
    let old_image = pseudo_random(IMAGE_LEN, 1);
    let (a_offset, _) = disk.partition_byte_range(USR_A_INDEX).unwrap();
    drop(disk);
    write_at(&template, a_offset, &old_image);

    let new_image = pseudo_random(IMAGE_LEN, 2);
    let image = dir.path().join("new.img");
    std::fs::write(&image, &new_image).unwrap();
    let private = fastpatch_payload::keys::generate_key().unwrap();
    let key = private.to_public_key();
    let payload = dir.path().join("new.payload");
    fastpatch_payload::generate::generate(
        &image,
        &[private],
        &payload,
        &fastpatch_payload::generate::GenerateOptions::default(),
        &mut |_, _| {},
    )
    .expect("generating the payload");
    let payload = std::fs::read(payload).unwrap();
    Fixture {
        dir,
        template,
        old_image,
        new_image,
        payload,
        key,
    }
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

fn read_range(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// One simulated machine: its disk, its state files, and what it has seen.
struct Machine<'f> {
    fx: &'f Fixture,
    disk: PathBuf,
    state_file: PathBuf,
    install_dir: PathBuf,
    boots: u32,
    /// Boots in which the chooser fell back to A after B had been tried.
    fallbacks: u32,
    /// Rollback reports (errorcode 44) the engine sent to the server.
    rollback_reports: std::cell::Cell<u32>,
}

impl<'f> Machine<'f> {
    fn new(fx: &'f Fixture, name: &str) -> Machine<'f> {
        let root = fx.dir.path().join(name);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let disk = root.join("disk.img");
        std::fs::copy(&fx.template, &disk).unwrap();
        Machine {
            fx,
            disk,
            state_file: root.join("engine-state.json"),
            install_dir: root.join("install"),
            boots: 0,
            fallbacks: 0,
            rollback_reports: std::cell::Cell::new(0),
        }
    }

    fn slot_bytes(&self, disk: &Disk, index: u32) -> Vec<u8> {
        let (offset, _) = disk.partition_byte_range(index).unwrap();
        read_range(&self.disk, offset, IMAGE_LEN)
    }

    /// Powers on and runs one boot. Ok(true) once the new version runs, marked good.
    fn boot(&mut self) -> Result<bool, PowerOff> {
        self.boots += 1;
        let mut disk =
            Disk::open(&self.disk, OpenMode::ReadWrite).map_err(|e| off("opening the table", e))?;
        let b_tried = {
            let b = disk.partition(USR_B_INDEX).unwrap().attrs;
            !b.successful && b.tries == 0 && b.priority > 0
        };
        let (partition, _) = disk
            .boot_next()
            .map_err(|e| off("boot chooser", e))?
            .unwrap_or_else(|| panic!("boot {}: no bootable slot", self.boots));
        let slot = Slot::from_partition_index(partition.index).expect("a USR slot");
        // The invariant: whatever the chooser picks is a complete, verified image.
        let bytes = self.slot_bytes(&disk, partition.index);
        let version = if slot == Slot::A {
            assert!(
                bytes == self.fx.old_image,
                "boot {}: A changed (the previously good slot must never change)",
                self.boots
            );
            if b_tried {
                self.fallbacks += 1;
            }
            OLD
        } else {
            assert!(
                bytes == self.fx.new_image,
                "boot {}: the chooser picked B, which does not hold the complete new image",
                self.boots
            );
            NEW
        };
        drop(disk);

        let mut boot = GptBootControl::new(&self.disk, slot);
        let staged = passive_staged(&boot).map_err(|e| off("reading the slots", e))?;
        let durable =
            persist::load(&self.state_file).map_err(|e| off("loading the engine state", e))?;
        let (mut engine, actions) = Engine::start(
            durable,
            BootFacts {
                current_version: version.into(),
                boot_id: format!("boot-{}", self.boots),
                passive_slot_staged: staged,
                passive_slot_refused: false,
            },
        );
        let mut shell = Shell {
            m: self,
            boot: &mut boot,
            installer: None,
        };
        shell.perform(&mut engine, actions)?;
        if engine.awaiting_good_boot() {
            // The health gate passes (this test is about power, not health).
            shell
                .boot
                .mark_booted_good()
                .map_err(|e| off("marking the boot good", e))?;
            let actions = engine.step(Input::BootMarkedGood);
            shell.perform(&mut engine, actions)?;
        }
        if version == NEW {
            let b = Disk::open(&self.disk, OpenMode::ReadOnly)
                .unwrap()
                .partition(USR_B_INDEX)
                .unwrap()
                .attrs;
            if b.successful {
                return Ok(true);
            }
        }
        let actions = engine.step(Input::CheckDue { interactive: false });
        shell.perform(&mut engine, actions)?;
        assert_eq!(
            engine.status(),
            UpdateStatus::UpdatedNeedReboot,
            "boot {} on {version}: the update should be staged now",
            self.boots
        );
        Ok(false)
    }
}

/// Performs the engine's actions synchronously, as the daemon shell does with real I/O.
struct Shell<'a, 'f> {
    m: &'a Machine<'f>,
    boot: &'a mut GptBootControl,
    installer: Option<Installer>,
}

impl Shell<'_, '_> {
    fn perform(&mut self, engine: &mut Engine, actions: Vec<Action>) -> Result<(), PowerOff> {
        let mut queue: Vec<Action> = actions;
        while !queue.is_empty() {
            let action = queue.remove(0);
            let input = match action {
                Action::SendUpdateCheck { events, .. } => {
                    self.count_rollbacks(&events);
                    Some(Input::CheckAnswered {
                        reply: CheckReply::Update(self.offer()),
                        poll_interval: None,
                    })
                }
                Action::SendPing | Action::PublishStatus | Action::ScheduleCheck(_) => None,
                Action::SendEvents(events) => {
                    self.count_rollbacks(&events);
                    Some(Input::ErrorReported)
                }
                Action::StartInstall(_) => {
                    self.install()?;
                    Some(Input::DownloadFinished)
                }
                Action::FinishInstall => {
                    let installer = self.installer.take().expect("an install is running");
                    installer
                        .finish()
                        .map_err(|e| PowerOff(format!("verifying the slot: {e}")))?;
                    Some(Input::InstallVerified)
                }
                Action::StageSlot => {
                    self.boot
                        .stage(Slot::B)
                        .map_err(|e| PowerOff(format!("staging: {e}")))?;
                    Some(Input::Staged)
                }
                // No extension is enabled on this machine: nothing to place or prune.
                Action::PlaceExtensions(_) => Some(Input::ExtensionsPlaced),
                Action::PruneExtensions { .. } => None,
                // The installer is taken by FinishInstall; this machine reboots by the test.
                Action::DropInstall | Action::RebootWhenReported => None,
                Action::UnstageSlot => panic!("nothing asked to unstage"),
                Action::Persist => {
                    persist::save(&self.m.state_file, engine.durable())
                        .map_err(|e| PowerOff(format!("saving the engine state: {e}")))?;
                    None
                }
            };
            if let Some(input) = input {
                queue.extend(engine.step(input));
            }
        }
        Ok(())
    }

    fn count_rollbacks(&self, events: &[Event]) {
        let n = events
            .iter()
            .filter(|e| e.error_code == Some(ErrorCode::ROLLED_BACK))
            .count() as u32;
        self.m
            .rollback_reports
            .set(self.m.rollback_reports.get() + n);
    }

    fn offer(&self) -> UpdateOffer {
        UpdateOffer::new(
            NEW,
            vec!["http://update.invalid/new.payload".into()],
            "new.payload",
            self.m.fx.payload.len() as u64,
            sha(&self.m.fx.payload),
        )
    }

    /// The download: the payload bytes from the installer's resume offset, in 64 KiB pieces.
    fn install(&mut self) -> Result<(), PowerOff> {
        let state = self.boot.slot_state(Slot::B).unwrap();
        let target = FileRange::open(&self.m.disk, state.byte_offset, state.byte_len).unwrap();
        let mut opts = InstallOptions::new(vec![self.m.fx.key.clone()]);
        opts.state_dir = Some(self.m.install_dir.clone());
        opts.payload_id = Some(hex(&self.offer().sha256));
        opts.checkpoint_bytes = 256 << 10;
        let mut installer = Installer::new(Arc::new(CutTarget(target)), opts)
            .map_err(|e| PowerOff(format!("starting the install: {e}")))?;
        let from = installer.resume_offset() as usize;
        for chunk in self.m.fx.payload[from..].chunks(64 << 10) {
            installer
                .feed(chunk)
                .map_err(|e| PowerOff(format!("installing: {e}")))?;
        }
        self.installer = Some(installer);
        Ok(())
    }
}

fn off(what: &str, e: impl std::fmt::Display) -> PowerOff {
    PowerOff(format!("{what}: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn all_points() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    v.extend(fastpatch_payload::FAIL_POINTS);
    v.extend(persist::CUT_POINTS);
    v.extend(fastpatch_disk::CUT_POINTS);
    v
}

/// Runs boots until the new version is good; returns the number of boots.
fn run_to_the_end(m: &mut Machine, cut: Option<&Cut>) -> Result<u32, String> {
    let mut cut_seen = false;
    loop {
        if m.boots >= MAX_BOOTS {
            return Err(format!("not on {NEW} after {MAX_BOOTS} boots"));
        }
        match m.boot() {
            Ok(true) if cut.is_some() && !cut_seen => {
                return Err("the cut never happened: the cycle differs from the dry run".into())
            }
            Ok(true) => return Ok(m.boots),
            Ok(false) => {}
            Err(PowerOff(why)) => {
                if cut.is_none() || cut_seen {
                    return Err(format!("boot {} failed without a cut: {why}", m.boots));
                }
                cut_seen = true;
                disarm();
            }
        }
    }
}

/// The position in the whole write sequence of byte `k` of these writes.
fn nth_byte(writes: &[(u64, u64)], mut k: u64) -> u64 {
    for &(start, len) in writes {
        if k < len {
            return start + k;
        }
        k -= len;
    }
    unreachable!("k is below the total length")
}

fn arm(cut: &Cut) {
    match cut {
        Cut::Bytes(n) => power::arm(*n),
        Cut::Point { name, hit } => fail::cfg(*name, &format!("{hit}*off->return")).unwrap(),
    }
}

fn disarm() {
    power::disarm();
    for p in all_points() {
        fail::remove(p);
    }
}

#[test]
fn no_power_cut_leaves_a_machine_booting_anything_but_a_complete_slot() {
    let _scenario = fail::FailScenario::setup();
    let cuts: u64 = std::env::var("FASTPATCH_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("FASTPATCH_POWER_CUT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(18);
    let fx = fixture();

    // A dry run: counts the bytes a whole cycle writes and the passes through each fail-point.
    let hits: Arc<std::sync::Mutex<BTreeMap<&'static str, u64>>> = Arc::default();
    for p in all_points() {
        let hits = hits.clone();
        fail::cfg_callback(p, move || *hits.lock().unwrap().entry(p).or_default() += 1).unwrap();
    }
    power::reset_counter();
    let mut m = Machine::new(&fx, "dry-run");
    let boots = run_to_the_end(&mut m, None).expect("the cycle without cuts");
    assert_eq!(
        boots, 2,
        "install on 1.0.0, then 2.0.0 boots and is marked good"
    );
    let bytes = power::bytes_written();
    let hits = hits.lock().unwrap().clone();
    disarm();
    assert!(
        bytes > IMAGE_LEN as u64,
        "the dry run wrote the slot: {bytes} bytes"
    );
    let points: Vec<(&'static str, u64)> = hits.into_iter().filter(|(_, n)| *n > 0).collect();
    assert!(
        points.len() >= 12,
        "most fail-points are passed in a cycle: {points:?}"
    );

    // Every byte of the sequence is a slot byte or a table byte.
    let slot_writes = std::mem::take(&mut *SLOT_WRITES.lock().unwrap());
    let mut table_writes = Vec::new();
    let mut at = 0;
    for &(start, len) in &slot_writes {
        if start > at {
            table_writes.push((at, start - at));
        }
        at = start + len;
    }
    if bytes > at {
        table_writes.push((at, bytes - at));
    }
    let slot_bytes: u64 = slot_writes.iter().map(|w| w.1).sum();
    let table_bytes: u64 = table_writes.iter().map(|w| w.1).sum();
    assert!(table_bytes > 0, "the dry run wrote the partition table");

    let mut rng = Rng(seed);
    let mut by_kind: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for i in 0..cuts {
        // A quarter at fail-points, the rest at random bytes: half in slot writes, half in
        // table writes (far fewer bytes, but each one a different moment of a table update).
        let cut = match rng.below(8) {
            0 | 1 => {
                let (name, n) = points[rng.below(points.len() as u64) as usize];
                Cut::Point {
                    name,
                    hit: rng.below(n),
                }
            }
            2..=4 => Cut::Bytes(nth_byte(&slot_writes, rng.below(slot_bytes))),
            _ => Cut::Bytes(nth_byte(&table_writes, rng.below(table_bytes))),
        };
        let mut m = Machine::new(&fx, "cut");
        arm(&cut);
        let boots = run_to_the_end(&mut m, Some(&cut))
            .unwrap_or_else(|e| panic!("cut {i} ({cut:?}, seed {seed}): {e}"));
        disarm();
        let kind = match &cut {
            Cut::Bytes(n) if slot_writes.iter().any(|&(s, l)| (s..s + l).contains(n)) => {
                "a byte of a slot write".to_string()
            }
            Cut::Bytes(_) => "a byte of a table write".to_string(),
            Cut::Point { name, .. } => name.to_string(),
        };
        // A rollback is reported exactly when one happened (a repeat is allowed only when a
        // cut fell between the server's answer and the state save).
        let reports = m.rollback_reports.get();
        if m.fallbacks == 0 {
            assert_eq!(
                reports, 0,
                "cut {i} ({cut:?}): a rollback reported that never happened"
            );
        } else {
            assert!(
                reports >= m.fallbacks,
                "cut {i} ({cut:?}): a rollback went unreported"
            );
        }
        let e = by_kind.entry(kind).or_default();
        e.0 += 1;
        e.1 += u64::from(boots);
        e.2 += u64::from(m.fallbacks);
        // After the cycle: B holds the new image and is good, A is untouched and still good.
        let disk = Disk::open(&m.disk, OpenMode::ReadOnly).unwrap();
        assert!(
            disk.health().is_clean(),
            "cut {i}: {}",
            disk.health().describe()
        );
        assert_eq!(m.slot_bytes(&disk, USR_A_INDEX), fx.old_image, "cut {i}: A");
        assert_eq!(m.slot_bytes(&disk, USR_B_INDEX), fx.new_image, "cut {i}: B");
        assert!(disk.partition(USR_A_INDEX).unwrap().attrs.successful);
        assert!(disk.partition(USR_B_INDEX).unwrap().attrs.successful);
        assert_eq!(disk.peek_next().map(|c| c.index), Some(USR_B_INDEX));
    }
    eprintln!(
        "power cuts: {cuts} (seed {seed}); a cycle writes {slot_bytes} slot bytes and {table_bytes} \
         table bytes and passes {} fail-points; every boot after every cut was a complete slot",
        points.len()
    );
    eprintln!(
        "{:<44} {:>6} {:>8} {:>10}",
        "cut at", "cuts", "boots", "fallbacks"
    );
    for (kind, (n, boots, fallbacks)) in by_kind {
        eprintln!("{kind:<44} {n:>6} {boots:>8} {fallbacks:>10}");
    }
}
