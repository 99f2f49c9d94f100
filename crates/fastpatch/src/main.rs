//! `fastpatch`: one thin binary over the library crates. Each area's crate owns its own
//! `cli` module (clap args + `run`); this file only dispatches to them.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fastpatch",
    version,
    about = "Atomic A/B OS updates: disk slots, signed payloads, update engine and reboot coordination",
    long_about = None
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `fastpatch_disk=debug`.
    /// Default: `info` for the daemon (`engine run`: status changes and the server's answers),
    /// `warn` for the one-shot commands.
    #[arg(long, global = true, env = "FASTPATCH_LOG")]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot-time actions on a running machine: `boot kexec` loads the next slot's kernel for
    /// a kexec reboot.
    #[command(subcommand)]
    Boot(fastpatch_boot_init::cli::BootCommand),
    /// Inspect and change GPT slot attributes (a cgpt-compatible subset).
    Cgpt(fastpatch_disk::cli::cgpt::CgptArgs),
    /// Create test disk images with the Flatcar partition layout.
    #[command(subcommand)]
    Disk(fastpatch_disk::cli::DiskCommand),
    /// Build a release of a fastpatch OS from a root filesystem (sealed USR image, payload,
    /// bootable disk), and verify one.
    #[command(subcommand)]
    Image(fastpatch_image::cli::ImageCommand),
    /// Signed update payloads: generate, inspect, verify, install.
    #[command(subcommand)]
    Payload(fastpatch_payload::cli::PayloadCommand),
    /// Create an RSA-2048 key pair for signing payloads.
    Keygen(fastpatch_payload::cli::KeygenArgs),
    /// The reboot coordination daemon (also run as `locksmithd`, e.g. a link to this binary).
    Locksmithd(fastpatch_locksmith::cli::LocksmithdArgs),
    /// Manage the etcd reboot semaphore (also run as `locksmithctl`): status, set-max, lock,
    /// unlock; `fastpatch locksmithctl help` for its own usage.
    Locksmithctl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// FleetLock reboot-lock server on the etcd reboot semaphore.
    #[command(subcommand)]
    Fleetlock(fastpatch_locksmith::cli::FleetlockCommand),
    /// The update engine daemon (`fastpatch engine run`).
    #[command(subcommand)]
    Engine(fastpatch_engine::daemon::cli::EngineCommand),
    /// update_engine_client: -status, -check_for_update, -update, -reset_status, -watch_for_updates.
    Client(fastpatch_engine::tools::ClientArgs),
    /// The update engine's status (a progress bar on a terminal; --json for scripts).
    Status(fastpatch_engine::tools::StatusArgs),
    /// Make the other slot boot next, if it holds a known-good image.
    Rollback(fastpatch_engine::tools::RollbackArgs),
    // Other areas add their subcommands here: one variant + one match arm each.
}

fn main() {
    // Installed as (or linked to) update_engine_client: behave exactly like it.
    if let Some(code) = fastpatch_engine::tools::dispatch_argv0() {
        std::process::exit(code);
    }
    // Installed as (or linked to) locksmithd or locksmithctl: behave exactly like them.
    if let Some(code) = fastpatch_locksmith::cli::dispatch_argv0() {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Engine(_) | Command::Boot(_) => Some("info"),
        // They set up their own logging, as when run under their own names.
        Command::Locksmithd(_) | Command::Locksmithctl { .. } => None,
        _ => Some("warn"),
    };
    if let Some(default_filter) = default_filter {
        fastpatch_logging::init(cli.log.as_deref().unwrap_or(default_filter), "warn");
    }
    if let Err(err) = run(cli) {
        // One line per cause: what failed, then why.
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Boot(cmd) => fastpatch_boot_init::cli::run(cmd),
        Command::Cgpt(args) => fastpatch_disk::cli::cgpt::run(args),
        Command::Disk(cmd) => fastpatch_disk::cli::run(cmd),
        Command::Image(cmd) => fastpatch_image::cli::run(cmd),
        Command::Payload(cmd) => fastpatch_payload::cli::run(cmd),
        Command::Keygen(args) => fastpatch_payload::cli::run_keygen(args),
        Command::Engine(cmd) => fastpatch_engine::daemon::cli::run_engine(cmd),
        Command::Client(args) => {
            std::process::exit(fastpatch_engine::tools::run_client(&args.flags))
        }
        Command::Status(args) => fastpatch_engine::tools::run_status(args),
        Command::Rollback(args) => fastpatch_engine::tools::run_rollback(args),
        Command::Fleetlock(cmd) => fastpatch_locksmith::cli::run(cmd),
        Command::Locksmithd(args) => fastpatch_locksmith::cli::run_locksmithd(args),
        Command::Locksmithctl { args } => {
            std::process::exit(fastpatch_locksmith::cli::run_locksmithctl(&args))
        }
    }
}
