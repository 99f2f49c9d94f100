//! The init sequence, from an empty initramfs to the exec of the OS.

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fastpatch_boot_init::{
    describe_choice, describe_slots, engine_launch, module_load_order, os_exit_verdict,
    result_line, slot_name, BootConfig, EngineLaunch, GuestExit, BOOT_ENV_FILE, ENGINE_BOOT_LAYER,
    ENGINE_DEFAULTS_LAYER, GUEST_ADDR, GUEST_PREFIX, HOST_GATEWAY, MODULE_DIR, MODULE_ORDER_FILE,
    OS_MODE_ARGV0, ROOT_MOUNT, USR_MOUNT,
};
use fastpatch_disk::{partition_path, Disk, OpenMode, Partition};

use crate::slot_boot;
use fastpatch_boot_init::slot::SlotStage;
use fastpatch_boot_init::sys::{self, ModuleLoad};
use fastpatch_boot_init::verity::{self, SlotProblem};

/// Runs the init and the OS; returns how the machine should end.
pub fn run() -> GuestExit {
    let started = Instant::now();
    match boot(started) {
        Ok(exit) => exit,
        Err(Failure { exit, error }) => {
            eprintln!("fastpatch-init: FAILED: {error:#}");
            eprintln!(
                "{}",
                result_line("init-failed", &[("exit", &format!("{exit:?}"))])
            );
            exit
        }
    }
}

struct Failure {
    exit: GuestExit,
    error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure {
            exit: GuestExit::InitFailed,
            error,
        }
    }
}

fn boot(started: Instant) -> Result<GuestExit, Failure> {
    mount_api_filesystems()?;
    let cmdline = fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let cfg = BootConfig::from_cmdline(&cmdline).map_err(anyhow::Error::from)?;
    load_modules()?;
    wait_for(Path::new(&cfg.disk), cfg.disk_timeout)?;
    eprintln!(
        "fastpatch-init: boot disk {} after {} ms",
        cfg.disk,
        started.elapsed().as_millis()
    );
    if let Some(stage) = SlotStage::from_cmdline(&cmdline) {
        // The slot's own initramfs, started by the chooser's kexec: returns only on failure.
        slot_boot::run_slot_stage(&cfg, &stage)?;
    }
    if cfg.net && !cfg.kexec {
        // The network is for the OS (a kexec'd slot kernel starts afresh); a machine without
        // it still boots and reports.
        if let Err(e) = bring_up_network() {
            tracing::warn!("network setup failed: {e:#}");
        }
    }
    let (chosen, repaired) = choose_slot(Path::new(&cfg.disk))?;
    if cfg.kexec {
        return Err(boot_slot_kernel(&cfg, chosen));
    }
    let dev = partition_path(Path::new(&cfg.disk), chosen.index);
    if repaired {
        // The kernel read the table while it was damaged (with a broken primary it may have
        // found no partitions at all); show it the repaired one. Nothing is mounted yet.
        match sys::reread_partitions(Path::new(&cfg.disk)) {
            Ok(()) => eprintln!("fastpatch-init: kernel re-read the repaired partition table"),
            Err(e) => tracing::warn!("re-reading the partition table of {}: {e}", cfg.disk),
        }
    }
    wait_for(&dev, cfg.disk_timeout)?;
    let dev_str = dev.to_string_lossy().into_owned();
    sys::mount(&dev_str, USR_MOUNT, "ext4", libc::MS_RDONLY, None)
        .with_context(|| format!("mounting {dev_str} read-only on {USR_MOUNT} as ext4"))?;
    eprintln!(
        "fastpatch-init: mounted USR-{} ({dev_str}) read-only on {USR_MOUNT} after {} ms",
        slot_name(chosen.index),
        started.elapsed().as_millis()
    );
    let root_mounted = match cfg.root {
        Some(index) => match mount_root(&cfg, index) {
            Ok(()) => true,
            // A machine without a ROOT file system still boots /usr; state just is not kept.
            Err(e) => {
                tracing::warn!("ROOT not mounted, state will not survive a reboot: {e:#}");
                false
            }
        },
        None => false,
    };
    Ok(handover(&cfg, &chosen, root_mounted)?)
}

/// Boots the chosen slot's own kernel once its seal verifies; a slot whose seal is invalid is
/// taken out of the boot order and the chooser runs again. Returns only on failure; a missing
/// key or an unreadable slot fails the boot without changing the boot order.
fn boot_slot_kernel(cfg: &BootConfig, mut chosen: Partition) -> Failure {
    let disk = Path::new(&cfg.disk);
    let keys = match slot_boot::chooser_keys() {
        Ok(keys) => keys,
        Err(e) => return e.into(),
    };
    let mut refused = Vec::new();
    for _ in 0..2 {
        let dev = partition_path(disk, chosen.index);
        if let Err(e) = wait_for(&dev, cfg.disk_timeout) {
            return e.into();
        }
        let booted = verity::verified_seal(&dev, &keys)
            .and_then(|seal| slot_boot::kexec_slot(&dev, &chosen, &seal, &refused));
        match booted {
            Ok(()) => return anyhow::anyhow!("kexec returned").into(),
            Err(SlotProblem::Unreadable(e)) => return e.into(),
            Err(SlotProblem::Invalid(why)) => {
                if let Err(e) = slot_boot::refuse_slot(disk, &chosen, &why) {
                    return e.into();
                }
                refused.extend(fastpatch_boot_control::Slot::from_partition_index(
                    chosen.index,
                ));
            }
        }
        chosen = match choose_slot(disk) {
            Ok((next, _)) => next,
            Err(failure) => return failure,
        };
    }
    anyhow::anyhow!("no USR slot with a verified seal").into()
}

fn mount_root(cfg: &BootConfig, index: u32) -> Result<()> {
    let dev = partition_path(Path::new(&cfg.disk), index);
    wait_for(&dev, cfg.disk_timeout)?;
    let dev_str = dev.to_string_lossy().into_owned();
    fs::create_dir_all(ROOT_MOUNT).with_context(|| format!("creating {ROOT_MOUNT}"))?;
    sys::mount(
        &dev_str,
        ROOT_MOUNT,
        "ext4",
        libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )
    .with_context(|| format!("mounting {dev_str} read-write on {ROOT_MOUNT} as ext4"))?;
    eprintln!("fastpatch-init: mounted ROOT ({dev_str}) read-write on {ROOT_MOUNT}");
    Ok(())
}

fn mount_api_filesystems() -> Result<()> {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for (fstype, target, flags) in [
        ("proc", "/proc", nosuid),
        ("sysfs", "/sys", nosuid),
        ("devtmpfs", "/dev", libc::MS_NOSUID),
        ("tmpfs", "/run", libc::MS_NOSUID | libc::MS_NODEV),
    ] {
        fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
        match sys::mount(fstype, target, fstype, flags, None) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e).with_context(|| format!("mounting {fstype} on {target}")),
        }
    }
    fs::create_dir_all(USR_MOUNT).with_context(|| format!("creating {USR_MOUNT}"))?;
    // The kernel opened /dev/console from the initramfs before devtmpfs existed; use the
    // devtmpfs node from here on so output keeps flowing to the serial console.
    if let Ok(console) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this process.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
    }
    Ok(())
}

fn load_modules() -> Result<()> {
    let list = match fs::read_to_string(MODULE_ORDER_FILE) {
        Ok(list) => list,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!("{MODULE_ORDER_FILE} missing: no modules loaded");
            return Ok(());
        }
        Err(e) => return Err(e).context(format!("reading {MODULE_ORDER_FILE}")),
    };
    let mut loaded = 0;
    for name in module_load_order(&list) {
        let path = PathBuf::from(MODULE_DIR).join(&name);
        match sys::load_module(&path) {
            Ok(ModuleLoad::Loaded) => loaded += 1,
            Ok(ModuleLoad::AlreadyThere) => {}
            // Some modules only fit some CPUs (crc32c-intel needs SSE4.2, absent under TCG).
            Err(e) => tracing::warn!("module {name}: {e}"),
        }
    }
    eprintln!("fastpatch-init: loaded {loaded} modules");
    Ok(())
}

fn wait_for(path: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() >= deadline {
            bail!(
                "{} did not appear within {} ms",
                path.display(),
                timeout.as_millis()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn bring_up_network() -> Result<()> {
    sys::interface_up("lo", Some(([127, 0, 0, 1], 8))).context("bringing up lo")?;
    let Some(eth) = sys::ethernet_interfaces()
        .context("listing /sys/class/net")?
        .into_iter()
        .next()
    else {
        bail!("no network interface besides lo");
    };
    sys::interface_up(&eth, Some((GUEST_ADDR, GUEST_PREFIX)))
        .with_context(|| format!("configuring {eth}"))?;
    sys::add_default_route(HOST_GATEWAY).context("adding the default route")?;
    let [a, b, c, d] = GUEST_ADDR;
    eprintln!("fastpatch-init: {eth} up as {a}.{b}.{c}.{d}/{GUEST_PREFIX}");
    Ok(())
}

/// The boot chooser: gptprio.next on the boot disk, tries decremented on disk before return.
/// Also says whether the table had to be repaired (opening it read-write repairs it).
fn choose_slot(disk_path: &Path) -> Result<(Partition, bool), Failure> {
    let repaired = !Disk::open(disk_path, OpenMode::ReadOnly)
        .with_context(|| format!("reading the GPT of {}", disk_path.display()))?
        .health()
        .is_clean();
    let mut disk = Disk::open(disk_path, OpenMode::ReadWrite)
        .with_context(|| format!("reading the GPT of {}", disk_path.display()))?;
    let usr: Vec<Partition> = disk
        .partitions()
        .into_iter()
        .filter(|p| p.is_usr())
        .collect();
    for line in describe_slots(&usr) {
        eprintln!("fastpatch-init: {line}");
    }
    let Some((partition, choice)) = disk
        .boot_next()
        .with_context(|| format!("writing the boot choice to {}", disk_path.display()))?
    else {
        return Err(Failure {
            exit: GuestExit::NoBootableSlot,
            error: anyhow::anyhow!(
                "no bootable USR slot on {} (every slot has priority 0, or no tries left \
                 and was never marked successful)",
                disk_path.display()
            ),
        });
    };
    eprintln!(
        "fastpatch-init: {}",
        describe_choice(choice.index, choice.before, choice.after)
    );
    eprintln!(
        "{}",
        result_line(
            "chooser",
            &[
                ("slot", &slot_name(choice.index)),
                ("partition", &choice.index.to_string()),
                ("priority", &choice.after.priority.to_string()),
                ("tries_before", &choice.before.tries.to_string()),
                ("tries_after", &choice.after.tries.to_string()),
                ("successful", &u8::from(choice.after.successful).to_string()),
            ]
        )
    );
    Ok((partition, repaired))
}

/// Writes the boot facts, starts the OS and waits for it (reaping orphans, as PID 1 must).
/// The OS normally ends the machine itself; if it exits instead, that decides the verdict.
fn handover(cfg: &BootConfig, chosen: &Partition, root_mounted: bool) -> Result<GuestExit> {
    let facts = [
        ("FASTPATCH_ROOT_MOUNTED", u8::from(root_mounted).to_string()),
        ("FASTPATCH_BOOT_DISK", cfg.disk.clone()),
        ("FASTPATCH_BOOTED_SLOT", slot_name(chosen.index)),
        ("FASTPATCH_BOOTED_PARTITION", chosen.index.to_string()),
        ("FASTPATCH_BOOTED_PARTUUID", chosen.unique_guid.to_string()),
    ];
    let text: String = facts.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    if let Some(dir) = Path::new(BOOT_ENV_FILE).parent() {
        if let Err(e) = fs::create_dir_all(dir).and_then(|()| fs::write(BOOT_ENV_FILE, text)) {
            tracing::warn!("writing {BOOT_ENV_FILE}: {e}");
        }
    }
    let (program, argv0, args, log) = match (&cfg.engine, &cfg.os) {
        (Some(engine), _) => {
            let launch = write_engine_layers(cfg, engine, chosen.index, root_mounted)?;
            (
                PathBuf::from(&launch.program),
                launch.program,
                launch.args,
                Some(cfg.log.clone()),
            )
        }
        (None, Some(path)) => (PathBuf::from(path), path.clone(), cfg.os_args.clone(), None),
        (None, None) => (
            PathBuf::from("/proc/self/exe"),
            OS_MODE_ARGV0.to_string(),
            cfg.os_args.clone(),
            None,
        ),
    };
    eprintln!(
        "fastpatch-init: handing over to {} {}",
        program.display(),
        args.join(" ")
    );
    let mut command = std::process::Command::new(&program);
    command.arg0(argv0).args(&args).envs(facts);
    if let Some(filter) = log {
        // The console is a serial line read by people and harnesses: no colour codes.
        command.env("FASTPATCH_LOG", filter).env("NO_COLOR", "1");
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting the OS {}", program.display()))?;
    let code = wait_reaping(child.id()).context("waiting for the OS")?;
    let exit = os_exit_verdict(code);
    let shown = code.map_or("signal".to_string(), |c| c.to_string());
    eprintln!(
        "fastpatch-init: the OS {} exited ({shown})",
        program.display()
    );
    eprintln!("{}", result_line("os-exit", &[("status", &shown)]));
    Ok(exit)
}

/// Writes the engine's defaults and boot-facts layers under /run (see
/// [`fastpatch_boot_init::EngineLaunch`]) and returns how to start it.
fn write_engine_layers(
    cfg: &BootConfig,
    engine: &str,
    slot_index: u32,
    root_mounted: bool,
) -> Result<EngineLaunch> {
    if !root_mounted {
        tracing::warn!("ROOT is not mounted: the engine's state lives in RAM for this boot only");
    }
    let launch = engine_launch(engine, slot_index, &cfg.disk).map_err(anyhow::Error::msg)?;
    for (path, text) in [
        (ENGINE_DEFAULTS_LAYER, &launch.defaults),
        (ENGINE_BOOT_LAYER, &launch.boot),
    ] {
        if let Some(dir) = Path::new(path).parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(path, text).with_context(|| format!("writing {path}"))?;
    }
    eprintln!(
        "fastpatch-init: engine layers written ({ENGINE_DEFAULTS_LAYER}, {ENGINE_BOOT_LAYER})"
    );
    Ok(launch)
}

/// Waits until process `pid` ends, reaping any other child on the way. Its exit code, or
/// `None` when a signal ended it.
fn wait_reaping(pid: u32) -> std::io::Result<Option<i32>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes one c_int through the pointer.
        let got = unsafe { libc::waitpid(-1, &mut status, 0) };
        if got < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        if u32::try_from(got) == Ok(pid) {
            return Ok(libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)));
        }
    }
}
