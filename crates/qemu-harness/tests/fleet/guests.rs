//! The fleet scenario's moving parts (`fleet/mod.rs`): one thread per guest that boots it again
//! after every reboot (and can SIGKILL it once, while it holds the reboot slot), and a watcher
//! that records the reboot semaphore's holders (an etcd watch) and the server's view of the
//! machines. Everything lands on one timeline, which the scenario checks at the end and which
//! is written next to the serial logs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Mutex;

use fastpatch_locksmith::etcd::{EtcdConfig, EtcdStore};
use fastpatch_locksmith::store::{reap, Coordinator, LockStore, RetryPolicy};
use fastpatch_qemu_harness::boot_until;

use crate::real_os_support::*;

/// What the scenario saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// QEMU started guest `guest`'s boot number `boot`.
    BootStarted { guest: usize, boot: usize },
    /// locksmithd started a reboot by `method` (`firmware` or `kexec`).
    RebootStarted { guest: usize, method: String },
    /// The guest rebooted: QEMU exited by itself, or (kexec) its next kernel was loaded and
    /// the try spent.
    Rebooted { guest: usize },
    /// The scenario SIGKILLed the guest's QEMU.
    Killed { guest: usize },
    /// The guest was powered on again after its kill.
    Resumed { guest: usize },
    /// The guest's boot reached `boot-complete.target` (its health checks passed; the test
    /// unit after the target printed its line on the serial console).
    Healthy { guest: usize },
    /// The reboot semaphore's holders changed (expired leases reaped, as locksmith reads it).
    Holders(Vec<String>),
    /// The server's record of a machine changed.
    Instance {
        id: String,
        version: String,
        status: String,
        error: Option<i64>,
    },
}

/// What the guest prints once its boot reached `boot-complete.target`.
pub const HEALTHY_LINE: &str = "FASTPATCH-RESULT gate boot-complete=active";
/// What `fastpatch boot kexec` prints once the next kernel is loaded and the try spent: the
/// kexec'd boot follows in the same QEMU run.
pub const KEXEC_LOADED_LINE: &str = "FASTPATCH-RESULT kexec-load ";
/// What locksmithd logs when it starts a reboot, followed by the method.
const REBOOT_STARTED: &str = "rebooting method=";
/// The guest that reboots by kexec (`REBOOT_METHOD=kexec` through `systemd.setenv=` on its
/// kernel command line, which every later boot keeps); the others through the firmware.
pub const KEXEC_GUEST: usize = 1;

/// The shared state of one fleet run.
pub struct Fleet {
    start: Instant,
    timeline: Mutex<Vec<(Duration, Seen)>>,
    /// Every guest is switched off and the watcher ends.
    pub stop: AtomicBool,
    /// The next guest whose log says "reboot lock taken" is SIGKILLed.
    pub kill_armed: AtomicBool,
    /// Which guest was killed.
    pub killed: Mutex<Option<usize>>,
    /// The killed guest may boot again.
    pub resume: AtomicBool,
    /// A guest thread's harness failure (an unexpected power-off, a timeout).
    pub failure: Mutex<Option<String>>,
    /// Each guest's machine-id once its first boot reported it (index = guest - 1).
    ids: Mutex<Vec<Option<String>>>,
}

impl Fleet {
    pub fn new() -> Fleet {
        Fleet {
            start: Instant::now(),
            timeline: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            kill_armed: AtomicBool::new(false),
            killed: Mutex::new(None),
            resume: AtomicBool::new(false),
            failure: Mutex::new(None),
            ids: Mutex::new(Vec::new()),
        }
    }

    fn learn_id(&self, guest: usize, log: &str) {
        let mut ids = self.ids.lock().unwrap();
        if ids.len() < guest {
            ids.resize(guest, None);
        }
        if ids[guest - 1].is_none() {
            ids[guest - 1] = log
                .lines()
                .find_map(|l| l.split("identity machine-id=").nth(1))
                .map(|id| id.trim().to_string());
        }
    }

    /// The guest with machine-id `id`, once known.
    fn guest_of(&self, id: &str) -> Option<usize> {
        let ids = self.ids.lock().unwrap();
        ids.iter()
            .position(|i| i.as_deref() == Some(id))
            .map(|i| i + 1)
    }

    pub fn push(&self, seen: Seen) {
        let at = self.start.elapsed();
        self.timeline.lock().unwrap().push((at, seen));
    }

    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn timeline(&self) -> Vec<(Duration, Seen)> {
        self.timeline.lock().unwrap().clone()
    }

    /// The timeline as text, one line per entry.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (at, seen) in self.timeline() {
            let _ = writeln!(out, "{:>8.1} s  {seen:?}", at.as_secs_f64());
        }
        out
    }

    fn fail(&self, why: String) {
        self.failure.lock().unwrap().get_or_insert(why);
    }

    /// Polls `done` every second until it holds; panics at `limit` or on a guest failure.
    pub fn wait_for(&self, what: &str, limit: Duration, done: &mut dyn FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(why) = self.failure.lock().unwrap().clone() {
                panic!("waiting for {what}: {why}\n{}", self.describe());
            }
            if done() {
                eprintln!("[{:>6.1} s] {what}", self.now().as_secs_f64());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {limit:?}\n{}",
                self.describe()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// How many of each marker a guest's log showed so far (a kexec'd guest boots several times
/// in one QEMU run).
#[derive(Default)]
struct Markers {
    healthy: usize,
    reboots: usize,
    kexecs: usize,
}

impl Markers {
    /// Pushes what is new in `text` onto the timeline.
    fn update(&mut self, fleet: &Fleet, guest: usize, text: &str) {
        // Whole lines only: the log may be read while a line is half written.
        let text = &text[..text.rfind('\n').map_or(0, |n| n + 1)];
        for line in text
            .lines()
            .filter(|l| l.contains(REBOOT_STARTED))
            .skip(self.reboots)
        {
            let method = line.split(REBOOT_STARTED).nth(1).unwrap_or_default();
            let method = method.split_whitespace().next().unwrap_or_default();
            fleet.push(Seen::RebootStarted {
                guest,
                method: method.to_string(),
            });
            self.reboots += 1;
        }
        for _ in text.matches(KEXEC_LOADED_LINE).skip(self.kexecs) {
            fleet.push(Seen::Rebooted { guest });
            self.kexecs += 1;
        }
        for _ in text.matches(HEALTHY_LINE).skip(self.healthy) {
            fleet.push(Seen::Healthy { guest });
            self.healthy += 1;
        }
    }
}

/// Boots guest `guest` from `disk` again after every reboot until the fleet stops. Returns
/// every boot's outcome (a QEMU run with kexec reboots in it split into its boots).
pub fn run_guest(fleet: &Fleet, guest: usize, disk: &Path, key: &SigningKey) -> Vec<BootOutcome> {
    let mut outcomes = Vec::new();
    for boot in 1.. {
        let mut spec =
            spec(&format!("fleet-m{guest}-{boot}"), disk, key).timeout(Duration::from_secs(3600));
        if guest == KEXEC_GUEST {
            spec = spec.arg("systemd.setenv=LOCKSMITHD_REBOOT_METHOD=kexec");
        }
        let log = spec.log.clone();
        fleet.push(Seen::BootStarted { guest, boot });
        let (mut killed, mut seen) = (false, Markers::default());
        let outcome = boot_until(&spec, &mut || {
            if fleet.stop.load(SeqCst) {
                return true;
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            fleet.learn_id(guest, &text);
            seen.update(fleet, guest, &text);
            // The kexec guest is never the one killed: its kexec reboot is measured.
            killed = guest != KEXEC_GUEST
                && fleet.kill_armed.load(SeqCst)
                && text.contains("reboot lock taken")
                && fleet.kill_armed.swap(false, SeqCst);
            killed
        });
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                fleet.fail(format!("guest {guest} boot {boot}: {e}"));
                return outcomes;
            }
        };
        let rebooted = outcome.rebooted();
        let stopped = outcome.stopped;
        let text = outcome.describe();
        outcomes.extend(outcome.split_after(KEXEC_LOADED_LINE));
        if killed {
            fleet.push(Seen::Killed { guest });
            *fleet.killed.lock().unwrap() = Some(guest);
            while !fleet.resume.load(SeqCst) && !fleet.stop.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
            }
            fleet.push(Seen::Resumed { guest });
        } else if fleet.stop.load(SeqCst) && stopped {
            return outcomes;
        } else if rebooted {
            fleet.push(Seen::Rebooted { guest });
        } else {
            fleet.fail(format!("guest {guest} boot {boot} ended by itself: {text}"));
            return outcomes;
        }
    }
    outcomes
}

/// Records the semaphore's holders (woken by an etcd watch, at least every 500 ms) and the
/// group's machines on the server (every 500 ms) until the fleet stops.
pub fn watch(fleet: &Fleet, etcd_endpoint: &str, tb: &Testbed) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = EtcdConfig::local().with_endpoints(etcd_endpoint);
    let store = rt.block_on(EtcdStore::connect(&cfg)).unwrap();
    let coord = Coordinator::new(store, "", RetryPolicy::short());
    let mut holders: Option<Vec<String>> = None;
    let mut machines: BTreeMap<String, (String, String, Option<i64>)> = BTreeMap::new();
    let mut shown = String::new();
    while !fleet.stop.load(SeqCst) {
        match rt.block_on(coord.store().read(coord.key())) {
            Ok(snap) => {
                let now = reap(&snap).0.holders().to_vec();
                if holders.as_ref() != Some(&now) {
                    fleet.push(Seen::Holders(now.clone()));
                    holders = Some(now);
                }
                let _ = rt.block_on(coord.wait_change(snap.revision, Duration::from_millis(500)));
            }
            Err(e) => {
                eprintln!("watcher: reading the semaphore: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        for i in tb.server.instances(GROUP).unwrap_or_default() {
            let row = (i.version, i.status.as_str().to_owned(), i.last_error_code);
            if machines.get(&i.machine_id) != Some(&row) {
                fleet.push(Seen::Instance {
                    id: i.machine_id.clone(),
                    version: row.0.clone(),
                    status: row.1.clone(),
                    error: row.2,
                });
                machines.insert(i.machine_id, row);
            }
        }
        let now = table(fleet, &machines, holders.as_deref().unwrap_or_default());
        if now != shown {
            eprintln!(
                "[{:>6.1} s] machine   power      version  status             lock\n{now}",
                fleet.now().as_secs_f64()
            );
            shown = now;
        }
    }
}

/// The live table: each machine's power state (from the guest threads), its version and status
/// on the server, and who holds the reboot slot. Without the time line, to print it only when
/// it changed.
fn table(
    fleet: &Fleet,
    machines: &BTreeMap<String, (String, String, Option<i64>)>,
    holders: &[String],
) -> String {
    let timeline = fleet.timeline();
    let power = |g: usize| {
        let last = timeline.iter().rev().find_map(|(_, s)| match s {
            Seen::BootStarted { guest, .. } | Seen::Resumed { guest } if *guest == g => {
                Some("booting")
            }
            Seen::Healthy { guest } if *guest == g => Some("up"),
            Seen::Rebooted { guest } if *guest == g => Some("rebooting"),
            Seen::Killed { guest } if *guest == g => Some("killed"),
            _ => None,
        });
        last.unwrap_or("")
    };
    let mut rows: Vec<String> = machines
        .iter()
        .map(|(id, (version, status, error))| {
            let (name, power) = match fleet.guest_of(id) {
                Some(g) => (format!("m{g}"), power(g)),
                None => (id[..8.min(id.len())].to_string(), ""),
            };
            let status = match error {
                Some(e) => format!("{status} (error {e})"),
                None => status.clone(),
            };
            let lock = if holders.contains(id) {
                "holds the reboot slot"
            } else {
                ""
            };
            format!("  {name:<9} {power:<10} {version:<8} {status:<18} {lock}")
                .trim_end()
                .to_string()
        })
        .collect();
    rows.sort();
    rows.join("\n")
}

/// One hold of the reboot slot: who, from when to when (`None`: still held at the end).
#[derive(Debug, Clone)]
pub struct Hold {
    pub id: String,
    pub taken: Duration,
    pub released: Option<Duration>,
}

/// The holds in the timeline, in order.
pub fn holds(timeline: &[(Duration, Seen)]) -> Vec<Hold> {
    let mut out: Vec<Hold> = Vec::new();
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    for (at, seen) in timeline {
        let Seen::Holders(now) = seen else { continue };
        for (id, idx) in open.clone() {
            if !now.contains(&id) {
                out[idx].released = Some(*at);
                open.remove(&id);
            }
        }
        for id in now {
            if !open.contains_key(id) {
                open.insert(id.clone(), out.len());
                out.push(Hold {
                    id: id.clone(),
                    taken: *at,
                    released: None,
                });
            }
        }
    }
    out
}

/// The machine-id a guest reported (its first boot's `identity` line).
pub fn machine_id(outcomes: &[BootOutcome]) -> String {
    outcomes
        .iter()
        .find_map(|o| o.result("identity").and_then(|r| r.get("machine-id")))
        .unwrap_or_else(|| {
            panic!(
                "no machine-id reported by {:?}",
                outcomes.first().map(|o| &o.log_path)
            )
        })
        .to_string()
}
