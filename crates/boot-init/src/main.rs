//! fastpatch's initramfs `/init` (PID 1): mounts the API file systems, loads the virtio and
//! ext4 modules, waits for the boot disk, runs the gptprio boot chooser (fastpatch-disk's
//! `boot_next`, the code behind `fastpatch cgpt next`), mounts the chosen USR slot read-only at
//! /usr, and execs the "OS". Started as `fastpatch-os` it is that OS: a stand-in that reports
//! what booted, optionally probes the host over HTTP and, when the slot's health check passes,
//! marks the slot good and powers off (else reboots, so the boot chooser falls back). Started
//! as `fastpatch-health` (or `/init health`) it is only that health check (exit 0 = healthy);
//! `/init reboot` reboots (the reboot command for an OS such as the engine).

mod init;
mod os;
mod slot_boot;

use fastpatch_boot_init::{sys, GuestExit, HEALTH_MODE_ARGV0, OS_MODE_ARGV0};

fn main() {
    tracing_subscriber::fmt()
        .without_time()
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Subcommands for programs the OS runs (not as PID 1, where the kernel may pass stray
    // command line words): `/init health`, `/init reboot`, `/init os`.
    // SAFETY: getpid has no preconditions.
    let is_pid1 = unsafe { libc::getpid() } == 1;
    let sub = std::env::args().nth(1).filter(|_| !is_pid1);
    let name = match sub.as_deref() {
        Some("health") => HEALTH_MODE_ARGV0.to_string(),
        Some("os") => OS_MODE_ARGV0.to_string(),
        Some("reboot") => reboot(),
        _ => name,
    };
    if name == HEALTH_MODE_ARGV0 {
        // An ordinary command (for the engine's health gate), not PID 1: just exit.
        std::process::exit(if os::health_check() { 0 } else { 1 });
    }
    match if name == OS_MODE_ARGV0 {
        os::run()
    } else {
        os::Ending::Exit(init::run())
    } {
        os::Ending::Exit(exit) => finish(exit),
        os::Ending::Reboot => reboot(),
    }
}

/// Reboots (with `-no-reboot`, QEMU exits with status 0: "the guest asked for a reboot").
fn reboot() -> ! {
    let err = sys::reboot();
    tracing::error!("reboot failed: {err}");
    std::process::exit(1);
}

/// Ends the machine with this outcome: QEMU's debug-exit port when present, else power-off.
fn finish(exit: GuestExit) -> ! {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    if let Err(e) = sys::qemu_debug_exit(exit.port_value()) {
        tracing::warn!("debug-exit port unavailable: {e}");
    }
    let err = sys::power_off();
    tracing::error!("power-off failed: {err}");
    // As PID 1, exiting panics the kernel; with panic=-1 that reboots, which ends QEMU too.
    std::process::exit(1);
}
