//! fastpatch's initramfs `/init` (PID 1): mounts the API file systems, loads the virtio and
//! ext4 modules, waits for the boot disk, runs the gptprio boot chooser (fastpatch-disk's
//! `boot_next`, the code behind `fastpatch cgpt next`), mounts the chosen USR slot read-only at
//! /usr, and execs the "OS". Started as `fastpatch-os` it is that OS: a stand-in that reports
//! what booted, optionally probes the host over HTTP and marks the slot good, then powers off.

mod init;
mod os;
mod sys;

use fastpatch_boot_init::{GuestExit, OS_MODE_ARGV0};

fn main() {
    tracing_subscriber::fmt()
        .without_time()
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let is_os = std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == OS_MODE_ARGV0);
    let exit = if is_os { os::run() } else { init::run() };
    finish(exit);
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
