//! `fastpatch boot` (feature `cli`): boot-time actions on a running machine, the chooser's code
//! run outside the initramfs.

use std::path::PathBuf;

use crate::kexec_reboot::{self, KexecOptions};
use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum BootCommand {
    /// Load the next boot's kernel for a kexec reboot, as the chooser would boot it: the
    /// gptprio choice, the slot's seal, its /usr through dm-verity (read whole on a first
    /// boot), its own kernel, initramfs and command line; then spend the slot's try on disk,
    /// so a kexec'd boot that never becomes good falls back as any boot would. Nothing on disk
    /// changes when it fails. Then `systemctl kexec` starts it (locksmithd does both with
    /// REBOOT_METHOD=kexec).
    Kexec(KexecArgs),
}

#[derive(Args)]
pub struct KexecArgs {
    /// The boot disk (default: fastpatch.disk= of this boot's command line, else /dev/vda,
    /// as the chooser).
    #[arg(long)]
    disk: Option<PathBuf>,
    /// Release keys (PEM files or directories; repeatable). Default: the engine's key paths
    /// under /usr/share and /etc/fastpatch/keys.d.
    #[arg(long = "key")]
    keys: Vec<PathBuf>,
}

pub fn run(cmd: BootCommand) -> Result<()> {
    match cmd {
        BootCommand::Kexec(args) => {
            let mut opts = KexecOptions {
                disk: args.disk,
                ..KexecOptions::default()
            };
            if !args.keys.is_empty() {
                opts.keys = args.keys;
            }
            let loaded = kexec_reboot::load_next_boot(&opts)?;
            kexec_reboot::report(&loaded);
            Ok(())
        }
    }
}
