//! `fastpatch engine run`, `fastpatch client`, `fastpatch status`, `fastpatch rollback`, and
//! the `update_engine_client` name dispatch.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use fastpatch_boot_control::BootControl;

use super::config::{BootedSlot, DaemonConfig, DEFAULT_LAYERS};
use crate::status::UpdateStatus;
use crate::status_report::StatusSnapshot;

#[derive(Debug, clap::Subcommand)]
pub enum EngineCommand {
    /// Run the update engine daemon (D-Bus com.coreos.update1; SIGTERM stops it).
    Run(ConfigArgs),
    /// Link the booted version's system extension images into /etc/extensions/ (and remove
    /// links to other versions' images). Run at boot before systemd-sysext.service
    /// (fastpatch-extensions.service); `engine run` does it too when it starts.
    LinkExtensions(ConfigArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// Engine config layers (TOML files or directories of *.toml), later ones win.
    /// Default: /usr/lib/fastpatch/engine.d, /etc/fastpatch/engine.toml, /etc/fastpatch/engine.d.
    #[arg(long = "config", value_name = "PATH")]
    pub config: Vec<PathBuf>,
}

impl ConfigArgs {
    pub fn load(&self) -> Result<DaemonConfig> {
        let cfg = if self.config.is_empty() {
            DaemonConfig::load_layers(&DEFAULT_LAYERS)
        } else {
            DaemonConfig::load_layers(&self.config)
        };
        Ok(cfg?)
    }
}

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// update_engine_client flags: -status, -check_for_update, -update, -reset_status,
    /// -watch_for_updates.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub flags: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
    /// D-Bus address (default: DBUS_SYSTEM_BUS_ADDRESS, else the system bus).
    #[arg(long, env = "DBUS_SYSTEM_BUS_ADDRESS")]
    pub bus: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The disk holding USR-A/USR-B (overrides the engine config).
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// The booted slot, `a` or `b` (overrides the engine config; default: kernel command line).
    #[arg(long, value_parser = ["a", "b", "A", "B"])]
    pub booted: Option<String>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `fastpatch engine ...`
pub fn run_engine(cmd: EngineCommand) -> Result<()> {
    match cmd {
        EngineCommand::Run(args) => {
            let cfg = args.load()?;
            let rt = runtime()?;
            let result = rt.block_on(async {
                let daemon = super::Daemon::new(cfg).await?;
                daemon.run(shutdown_signal()).await
            });
            // Do not wait long for an installer thread mid-write; its checkpoint is durable.
            rt.shutdown_timeout(Duration::from_secs(5));
            result
        }
        EngineCommand::LinkExtensions(args) => {
            let cfg = args.load()?;
            let version =
                crate::sysinfo::os_version(&cfg.root).context("reading the booted version")?;
            let links = super::extensions::activate(&cfg.extension_layout(), &version)
                .context("linking the system extensions")?;
            for (link, target) in &links {
                println!("{} -> {}", link.display(), target.display());
            }
            if links.is_empty() {
                println!("no system extension images for {version}");
            }
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `fastpatch client FLAGS` / `update_engine_client FLAGS`: returns the exit code.
pub fn run_client(flags: &[String]) -> i32 {
    let cmds = match crate::client::parse_args(flags) {
        Ok(c) => c,
        Err(usage) => {
            eprintln!("{usage}");
            return 2;
        }
    };
    match runtime() {
        Ok(rt) => rt.block_on(crate::client::run(&cmds)),
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// When invoked as `update_engine_client`, runs the client and returns its exit code.
pub fn dispatch_argv0() -> Option<i32> {
    let mut args = std::env::args();
    let argv0 = args.next()?;
    let name = std::path::Path::new(&argv0).file_name()?.to_str()?;
    if name != "update_engine_client" {
        return None;
    }
    let flags: Vec<String> = args.collect();
    Some(run_client(&flags))
}

/// `fastpatch status [--json]`.
pub fn run_status(args: StatusArgs) -> Result<()> {
    let rt = runtime()?;
    let snap = rt.block_on(async {
        let proxy = crate::dbus::client(args.bus.as_deref())
            .await
            .context("connecting to the update engine over D-Bus")?;
        let t = proxy.get_status().await.context("GetStatus")?;
        anyhow::Ok(StatusSnapshot {
            last_checked_time: t.0,
            progress: t.1,
            current_operation: t.2.parse().unwrap_or(UpdateStatus::Idle),
            new_version: t.3,
            new_size: t.4,
        })
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snap)?);
        return Ok(());
    }
    print!("{}", human_status(&snap));
    if std::io::stdout().is_terminal()
        && matches!(
            snap.current_operation,
            UpdateStatus::Downloading | UpdateStatus::Verifying | UpdateStatus::Finalizing
        )
    {
        let bar = indicatif::ProgressBar::new(1000);
        bar.set_style(
            indicatif::ProgressStyle::with_template("[{bar:40}] {percent:>3}%")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_position((snap.progress.clamp(0.0, 1.0) * 1000.0) as u64);
        bar.abandon();
    }
    Ok(())
}

/// The modern, human status text.
pub fn human_status(s: &StatusSnapshot) -> String {
    let state = match s.current_operation {
        UpdateStatus::Idle => "idle",
        UpdateStatus::CheckingForUpdate => "checking for an update",
        UpdateStatus::UpdateAvailable => "update available",
        UpdateStatus::Downloading => "downloading",
        UpdateStatus::Verifying => "verifying",
        UpdateStatus::Finalizing => "finalizing",
        UpdateStatus::UpdatedNeedReboot => "updated, reboot needed",
        UpdateStatus::ReportingErrorEvent => "reporting an error",
    };
    let mut out = format!("State:        {state} ({})\n", s.current_operation);
    if s.new_version != crate::status_report::NO_VERSION {
        out += &format!("New version:  {} ({} bytes)\n", s.new_version, s.new_size);
    }
    if matches!(
        s.current_operation,
        UpdateStatus::Downloading | UpdateStatus::Verifying | UpdateStatus::Finalizing
    ) {
        out += &format!("Progress:     {:.1}%\n", s.progress * 100.0);
    }
    out += &format!(
        "Last check:   {}\n",
        if s.last_checked_time == 0 {
            "never".to_string()
        } else {
            format!("{} (unix time)", s.last_checked_time)
        }
    );
    out
}

/// `fastpatch rollback`: make the other slot boot next, if it holds a known-good image.
pub fn run_rollback(args: RollbackArgs) -> Result<()> {
    let mut cfg = args.config.load()?;
    if let Some(d) = args.disk {
        cfg.disk = Some(d);
    }
    if let Some(b) = args.booted {
        cfg.booted_slot = if b.eq_ignore_ascii_case("a") {
            BootedSlot::A
        } else {
            BootedSlot::B
        };
    }
    let (mut boot, disk) = super::boot_control(&cfg)?;
    let outcome = boot
        .rollback()
        .with_context(|| format!("rolling back on {}", disk.display()))?;
    let state = boot.slot_state(outcome.next)?;
    println!(
        "Rolled back: {} (partition {}, {}) boots next; {} stays as it is.",
        outcome.next,
        state.partition_index,
        state.unique_guid,
        boot.booted()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_status_text() {
        let s = StatusSnapshot {
            last_checked_time: 0,
            progress: 0.5,
            current_operation: UpdateStatus::Downloading,
            new_version: "2".into(),
            new_size: 10,
        };
        assert_eq!(
            human_status(&s),
            "State:        downloading (UPDATE_STATUS_DOWNLOADING)\nNew version:  2 (10 bytes)\nProgress:     50.0%\nLast check:   never\n"
        );
        assert_eq!(
            human_status(&StatusSnapshot::default()),
            "State:        idle (UPDATE_STATUS_IDLE)\nLast check:   never\n"
        );
    }
}
