//! One QEMU boot: `qemu-system-x86_64 -accel tcg` with the kernel, initramfs and disk image,
//! the serial console captured to a log file, a hard timeout, and the guest's outcome read
//! from the isa-debug-exit status and its `FASTPATCH-RESULT` lines.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fastpatch_boot_init::{parse_result_line, GuestExit};

use crate::{io_err, Result};

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct BootSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disk: PathBuf,
    /// The serial console goes here (overwritten; kept after the boot).
    pub log: PathBuf,
    /// Extra kernel command line words, e.g. `fastpatch.probe=...`.
    pub cmdline: Vec<String>,
    /// QEMU is killed after this long. Default 90 s (a boot takes ~7 s under TCG), or
    /// `FASTPATCH_QEMU_TIMEOUT_SECS`.
    pub timeout: Duration,
    pub memory_mib: u32,
    /// Attach a virtio-net NIC on QEMU user networking (the host is 10.0.2.2).
    pub net: bool,
    /// Simulated power cut: QEMU is killed (SIGKILL) as soon as the serial log contains this
    /// text (plus [`BootSpec::kill_delay`]). Writes the guest already flushed are in the
    /// image; nothing after is.
    pub kill_on: Option<String>,
    /// How long after the [`BootSpec::kill_on`] marker the power is cut.
    pub kill_delay: Duration,
}

impl BootSpec {
    pub fn new(kernel: &Path, initrd: &Path, disk: &Path, log: &Path) -> BootSpec {
        let timeout = std::env::var("FASTPATCH_QEMU_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(Duration::from_secs(90), Duration::from_secs);
        BootSpec {
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            disk: disk.to_path_buf(),
            log: log.to_path_buf(),
            cmdline: Vec::new(),
            timeout,
            memory_mib: 512,
            net: true,
            kill_on: None,
            kill_delay: Duration::ZERO,
        }
    }

    /// Kills QEMU (a power cut) once the serial log shows `marker`.
    pub fn kill_on(mut self, marker: impl Into<String>) -> BootSpec {
        self.kill_on = Some(marker.into());
        self
    }

    /// Kills QEMU (a power cut) `delay` after the serial log shows `marker`, e.g. in the
    /// middle of a write that the marker announces.
    pub fn kill_after(mut self, marker: impl Into<String>, delay: Duration) -> BootSpec {
        self.kill_on = Some(marker.into());
        self.kill_delay = delay;
        self
    }

    /// Another serial log file (for the next boot of the same machine).
    pub fn with_log(mut self, log: &Path) -> BootSpec {
        self.log = log.to_path_buf();
        self
    }

    /// Overrides the timeout.
    pub fn timeout(mut self, timeout: Duration) -> BootSpec {
        self.timeout = timeout;
        self
    }

    /// Adds a kernel command line word.
    pub fn arg(mut self, word: impl Into<String>) -> BootSpec {
        self.cmdline.push(word.into());
        self
    }

    /// The full kernel command line.
    pub fn kernel_cmdline(&self) -> String {
        // panic=-1: if /init dies the kernel reboots at once, which -no-reboot turns into exit.
        let mut words = vec![
            "console=ttyS0".to_string(),
            "panic=-1".to_string(),
            "quiet".to_string(),
            // A throw-away test guest under TCG: skip speculative-execution mitigations and
            // the TSC checks (about 1 s of emulated time per boot).
            "mitigations=off".to_string(),
            "tsc=reliable".to_string(),
            "no_timer_check".to_string(),
            "fastpatch.disk=/dev/vda".to_string(),
        ];
        words.extend(self.cmdline.iter().cloned());
        // For debugging a guest by hand, e.g. FASTPATCH_QEMU_APPEND="loglevel=7".
        if let Ok(extra) = std::env::var("FASTPATCH_QEMU_APPEND") {
            words.extend(extra.split_whitespace().map(str::to_string));
        }
        words.join(" ")
    }

    /// The QEMU command for this boot.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-m"])
            .arg(self.memory_mib.to_string())
            .args(["-nographic", "-no-reboot", "-kernel"])
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .arg("-append")
            .arg(self.kernel_cmdline())
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,cache=writeback",
                self.disk.display()
            ))
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        if self.net {
            cmd.args([
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-pci,netdev=n0,romfile=",
            ]);
        } else {
            cmd.args(["-nic", "none"]);
        }
        cmd
    }
}

/// One `FASTPATCH-RESULT <stage> k=v ...` line from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestResult {
    pub stage: String,
    pub fields: Vec<(String, String)>,
}

impl GuestResult {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// How a boot ended.
#[derive(Debug, Clone)]
pub struct BootOutcome {
    /// QEMU's exit status; `None` when it was killed (timeout) or died by a signal.
    pub status: Option<i32>,
    pub timed_out: bool,
    /// QEMU was killed because the log showed [`BootSpec::kill_on`].
    pub cut: bool,
    /// QEMU was killed because the caller's condition held ([`boot_until`]): the guest had
    /// reached the state under test (its OS runs forever, as the engine does).
    pub stopped: bool,
    pub elapsed: Duration,
    pub log_path: PathBuf,
    pub log: String,
    pub results: Vec<GuestResult>,
}

impl BootOutcome {
    /// The guest's outcome from the debug-exit status.
    pub fn exit(&self) -> Option<GuestExit> {
        self.status.and_then(GuestExit::from_qemu_status)
    }

    /// The guest asked for a reboot: QEMU (with `-no-reboot`) exited with status 0 on its own,
    /// and the kernel did not panic.
    pub fn rebooted(&self) -> bool {
        self.status == Some(0) && !self.log.contains("Kernel panic")
    }

    /// The boots of one QEMU run, split after each line containing `marker`: a kexec reboot
    /// starts the next boot without QEMU exiting. Every part but the last counts as a boot
    /// that asked for a reboot; the last keeps this run's ending.
    pub fn split_after(&self, marker: &str) -> Vec<BootOutcome> {
        let mut parts = Vec::new();
        let mut rest = self.log.as_str();
        while let Some(at) = rest.find(marker) {
            let end = rest[at..].find('\n').map_or(rest.len(), |n| at + n + 1);
            parts.push(self.part(&rest[..end], Some(0)));
            rest = &rest[end..];
        }
        if parts.is_empty() {
            return vec![self.clone()];
        }
        let mut last = self.part(rest, self.status);
        (last.timed_out, last.cut, last.stopped) = (self.timed_out, self.cut, self.stopped);
        parts.push(last);
        parts
    }

    fn part(&self, log: &str, status: Option<i32>) -> BootOutcome {
        BootOutcome {
            status,
            timed_out: false,
            cut: false,
            stopped: false,
            elapsed: self.elapsed,
            log_path: self.log_path.clone(),
            log: log.to_string(),
            results: results_of(log),
        }
    }

    /// The last result line of `stage`.
    pub fn result(&self, stage: &str) -> Option<&GuestResult> {
        self.results.iter().rev().find(|r| r.stage == stage)
    }

    /// The last `n` lines of the serial log.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A report for a failed assertion: status, time, where the log is, and its tail.
    pub fn describe(&self) -> String {
        let how = if self.timed_out {
            "timed out and was killed".to_string()
        } else if self.cut {
            "was killed at the power-cut marker".to_string()
        } else if self.stopped {
            "was stopped by the harness once its condition held".to_string()
        } else {
            match (self.status, self.exit()) {
                (Some(s), Some(e)) => format!("exited with status {s} ({e:?})"),
                (Some(s), None) => format!("exited with status {s} (no guest verdict)"),
                (None, _) => "died by a signal".to_string(),
            }
        };
        format!(
            "QEMU {how} after {:.1} s; serial log kept at {}; last lines:\n{}",
            self.elapsed.as_secs_f64(),
            self.log_path.display(),
            self.tail(40)
        )
    }

    /// Ok when the guest ended with `expected`, else the [`BootOutcome::describe`] report.
    pub fn expect_exit(&self, expected: GuestExit) -> Result<&BootOutcome, String> {
        if self.exit() == Some(expected) {
            Ok(self)
        } else {
            Err(format!(
                "expected the guest to end {expected:?}: {}",
                self.describe()
            ))
        }
    }
}

/// Boots once and waits for QEMU to end, killing it at the spec's timeout. Only harness
/// problems (QEMU missing, log not writable) are errors; every guest outcome is a
/// [`BootOutcome`].
pub fn boot(spec: &BootSpec) -> Result<BootOutcome> {
    boot_until(spec, &mut || false)
}

/// How often a running boot is looked at (log marker, caller's condition, timeout).
const POLL: Duration = Duration::from_millis(10);
/// How often the caller's condition of [`boot_until`] is asked (it may query a server).
const CONDITION_POLL: Duration = Duration::from_millis(200);

/// Like [`boot`], and QEMU is also killed as soon as `done()` returns true (asked every
/// 200 ms): for a guest whose OS runs until it is switched off, once the state under test is
/// reached (e.g. the update server has recorded the guest's report). The outcome then has
/// [`BootOutcome::stopped`] set.
pub fn boot_until(spec: &BootSpec, done: &mut dyn FnMut() -> bool) -> Result<BootOutcome> {
    let log =
        File::create(&spec.log).map_err(io_err(format!("creating {}", spec.log.display())))?;
    let log_err = log
        .try_clone()
        .map_err(io_err(format!("duplicating {}", spec.log.display())))?;
    let mut cmd = spec.command();
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(io_err(
            "starting qemu-system-x86_64 (scripts/qemu-assets installs it)",
        ))?;
    let deadline = started + spec.timeout;
    let mut watcher = spec
        .kill_on
        .as_deref()
        .map(|m| LogWatcher::new(&spec.log, m));
    let mut cut_at: Option<Instant> = None;
    let mut next_condition = started;
    let (mut timed_out, mut cut, mut stopped) = (false, false, false);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io_err("waiting for QEMU"))? {
            break status;
        }
        let now = Instant::now();
        timed_out = now >= deadline;
        if cut_at.is_none() {
            if let Some(w) = watcher.as_mut() {
                if w.seen()? {
                    cut_at = Some(now + spec.kill_delay);
                }
            }
        }
        cut = cut_at.is_some_and(|at| now >= at);
        if now >= next_condition {
            next_condition = now + CONDITION_POLL;
            stopped = done();
        }
        if timed_out || cut || stopped {
            // Kill errors only mean it already ended; wait reaps it either way.
            let _ = child.kill();
            break child.wait().map_err(io_err("reaping QEMU"))?;
        }
        std::thread::sleep(POLL);
    };
    let elapsed = started.elapsed();
    let bytes =
        std::fs::read(&spec.log).map_err(io_err(format!("reading {}", spec.log.display())))?;
    let log = String::from_utf8_lossy(&bytes).into_owned();
    let results = results_of(&log);
    let killed = timed_out || cut || stopped;
    Ok(BootOutcome {
        status: if killed { None } else { status.code() },
        timed_out,
        cut: cut && !timed_out,
        stopped: stopped && !timed_out && !cut,
        elapsed,
        log_path: spec.log.clone(),
        log,
        results,
    })
}

/// The guest's result lines in a serial log.
fn results_of(log: &str) -> Vec<GuestResult> {
    log.lines()
        .filter_map(parse_result_line)
        .map(|(stage, fields)| GuestResult { stage, fields })
        .collect()
}

/// Follows a growing log file and reports when a marker has appeared.
struct LogWatcher {
    path: PathBuf,
    marker: Vec<u8>,
    offset: u64,
    /// The unsearched tail kept across reads, so a marker split between reads is found.
    carry: Vec<u8>,
}

impl LogWatcher {
    fn new(path: &Path, marker: &str) -> LogWatcher {
        LogWatcher {
            path: path.to_path_buf(),
            marker: marker.as_bytes().to_vec(),
            offset: 0,
            carry: Vec::new(),
        }
    }

    fn seen(&mut self) -> Result<bool> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f =
            File::open(&self.path).map_err(io_err(format!("reading {}", self.path.display())))?;
        f.seek(SeekFrom::Start(self.offset))
            .map_err(io_err(format!("seeking in {}", self.path.display())))?;
        let mut new = Vec::new();
        f.read_to_end(&mut new)
            .map_err(io_err(format!("reading {}", self.path.display())))?;
        self.offset += new.len() as u64;
        self.carry.extend_from_slice(&new);
        let found = self
            .carry
            .windows(self.marker.len().max(1))
            .any(|w| w == self.marker.as_slice());
        let keep = self.marker.len().saturating_sub(1);
        if self.carry.len() > keep {
            self.carry.drain(..self.carry.len() - keep);
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(log: &str, status: Option<i32>) -> BootOutcome {
        BootOutcome {
            status,
            timed_out: false,
            cut: false,
            stopped: true,
            elapsed: Duration::from_secs(1),
            log_path: PathBuf::from("x.log"),
            log: log.to_string(),
            results: results_of(log),
        }
    }

    #[test]
    fn a_run_with_kexec_reboots_splits_into_its_boots() {
        let run = outcome(
            "FASTPATCH-RESULT systemd version=1\nx FASTPATCH-RESULT kexec-load slot=B\n\
             FASTPATCH-RESULT systemd version=2\nFASTPATCH-RESULT kexec-load slot=A\n\
             FASTPATCH-RESULT systemd version=3\n",
            None,
        );
        let parts = run.split_after("FASTPATCH-RESULT kexec-load");
        let versions: Vec<_> = parts
            .iter()
            .map(|p| p.result("systemd").and_then(|r| r.get("version")))
            .collect();
        assert_eq!(versions, [Some("1"), Some("2"), Some("3")]);
        assert_eq!(
            parts[0].result("kexec-load").unwrap().get("slot"),
            Some("B")
        );
        assert!(parts[1].rebooted() && !parts[1].stopped);
        assert!(parts[2].stopped && parts[2].status.is_none());
        let plain = outcome("FASTPATCH-RESULT systemd version=1\n", Some(0));
        assert_eq!(plain.split_after("kexec-load").len(), 1);
    }
}
