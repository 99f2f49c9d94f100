//! locksmithd: reboots the machine when an update is staged, coordinated per REBOOT_STRATEGY.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fastpatch_locksmith::config::{DaemonConfig, Settings};
use fastpatch_locksmith::dbus::{connect, DbusEngine};

#[derive(Parser)]
#[command(
    name = "locksmithd",
    version,
    about = "Reboot coordination daemon (locksmith compatible)"
)]
struct Args {
    /// Root directory for update.conf, coordinator.conf, machine-id, utmp (tests run unprivileged).
    #[arg(long, env = "LOCKSMITHD_ROOT", default_value = "/")]
    root: PathBuf,
    /// Log filter.
    #[arg(long, env = "LOCKSMITHD_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a journal, a file or a pipe gets plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    let settings = Settings::load(&args.root, std::env::vars()).context("reading update.conf")?;
    let cfg = DaemonConfig::from_settings(&args.root, &settings).context("configuration")?;
    let conn = connect(cfg.dbus_address.as_deref())
        .await
        .context("connecting to D-Bus")?;
    fastpatch_locksmith::daemon::run(cfg, DbusEngine { conn })
        .await
        .context("locksmithd")?;
    Ok(())
}
