//! locksmithd: reboots the machine when an update is staged, coordinated per REBOOT_STRATEGY.

use clap::Parser;
use fastpatch_locksmith::cli::{run_locksmithd, LocksmithdArgs};

fn main() -> anyhow::Result<()> {
    run_locksmithd(LocksmithdArgs::parse())
}
