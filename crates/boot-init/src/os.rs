//! The stand-in "OS" (argv\[0\] `fastpatch-os`): reports the version of the mounted USR slot,
//! optionally fetches a URL from the host and marks the booted slot good, then ends the
//! machine. The fastpatch engine with its health gate takes this place later.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use fastpatch_boot_init::{
    health_verdict, os_release_version, result_line, BootConfig, GuestExit, HEALTH_FILE,
    ROOT_MOUNT, USR_MOUNT,
};
use fastpatch_disk::{Disk, OpenMode};

/// How the OS ends the machine.
pub enum Ending {
    Exit(GuestExit),
    /// The health gate failed: reboot so the chooser falls back to the other slot.
    Reboot,
}

pub fn run() -> Ending {
    let mut fields: Vec<(&str, String)> = Vec::new();
    let outcome = report(&mut fields);
    if let Err(e) = &outcome {
        eprintln!("fastpatch-os: FAILED: {e:#}");
        fields.push(("error", "1".to_string()));
    }
    let borrowed: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    eprintln!("{}", result_line("os", &borrowed));
    match outcome {
        Ok(Gate::Passed) => Ending::Exit(GuestExit::OsOk),
        Ok(Gate::Failed) => {
            eprintln!("fastpatch-os: health gate failed: not marking good, rebooting");
            Ending::Reboot
        }
        Err(_) => Ending::Exit(GuestExit::OsFailed),
    }
}

enum Gate {
    /// Healthy, or no gate asked for.
    Passed,
    Failed,
}

/// The test OS's health check (the stand-in for the engine's health gate).
pub fn health_check() -> bool {
    let content = std::fs::read_to_string(HEALTH_FILE).ok();
    match health_verdict(content.as_deref()) {
        Ok(()) => true,
        Err(why) => {
            eprintln!("fastpatch-health: unhealthy: {why}");
            false
        }
    }
}

fn report(fields: &mut Vec<(&'static str, String)>) -> Result<Gate> {
    let slot = std::env::var("FASTPATCH_BOOTED_SLOT").unwrap_or_default();
    let partition = std::env::var("FASTPATCH_BOOTED_PARTITION").unwrap_or_default();
    fields.push(("slot", slot.clone()));
    fields.push(("partition", partition.clone()));
    let os_release = Path::new(USR_MOUNT).join("lib/os-release");
    let text = std::fs::read_to_string(&os_release)
        .with_context(|| format!("reading {}", os_release.display()))?;
    let version = os_release_version(&text)
        .with_context(|| format!("{} has no VERSION=", os_release.display()))?;
    eprintln!("fastpatch-os: running version {version} from USR-{slot} (partition {partition})");
    fields.push(("version", version));

    if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
        fields.push(("machine_id", id.trim().to_string()));
    }
    if std::env::var("FASTPATCH_ROOT_MOUNTED").as_deref() == Ok("1") {
        let boots = count_boot().context("counting boots on ROOT")?;
        eprintln!("fastpatch-os: boot number {boots} of this machine (kept on ROOT)");
        fields.push(("boots", boots.to_string()));
    }

    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let cfg = BootConfig::from_cmdline(&cmdline)?;
    if let Some(url) = &cfg.probe {
        let body = probe(url)?;
        let first = body.lines().next().unwrap_or("").trim().replace(' ', "_");
        eprintln!("fastpatch-os: {url} answered: {body:?}");
        fields.push(("probe", first));
    }
    if cfg.mark_good {
        // The health gate: a slot is only marked good when its check passes.
        if !health_check() {
            fields.push(("health", "fail".to_string()));
            return Ok(Gate::Failed);
        }
        fields.push(("health", "ok".to_string()));
        let index: u32 = partition
            .parse()
            .with_context(|| format!("booted partition {partition:?} is not a number"))?;
        let mut disk = Disk::open(Path::new(&cfg.disk), OpenMode::ReadWrite)
            .with_context(|| format!("opening {}", cfg.disk))?;
        disk.mark_good(index)
            .with_context(|| format!("marking partition {index} good"))?;
        eprintln!("fastpatch-os: marked USR-{slot} good");
        fields.push(("marked_good", "1".to_string()));
    }
    Ok(Gate::Passed)
}

/// Increments the boot counter on ROOT durably (tmp + fsync + rename + dir fsync).
fn count_boot() -> Result<u64> {
    let dir = Path::new(ROOT_MOUNT).join("lib/fastpatch-os");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("boot-count");
    let previous: u64 = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{} holds {text:?}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let boots = previous + 1;
    fastpatch_durable::replace(&path, format!("{boots}\n").as_bytes())?;
    Ok(boots)
}

fn probe(url: &str) -> Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the body of {url}"))
}
