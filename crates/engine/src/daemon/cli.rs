//! `fastpatch engine run` and `fastpatch engine link-extensions`: the daemon's own commands
//! (the tools around it, `client`, `status`, `rollback`, are in [`crate::tools`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use super::config::{DaemonConfig, DEFAULT_LAYERS};

#[derive(Debug, clap::Subcommand)]
pub enum EngineCommand {
    /// Run the update engine daemon (D-Bus com.coreos.update1; SIGTERM stops it).
    Run(ConfigArgs),
    /// Link the booted version's system extension images into /etc/extensions/ (and remove
    /// links to other versions' images). Run at boot before systemd-sysext.service
    /// (fastpatch-extensions.service); `engine run` does it too when it starts.
    LinkExtensions(ConfigArgs),
    /// Run the health checks of the engine config's [health] section (units active, commands
    /// exiting 0) in rounds until they pass (exit 0) or its timeout_secs pass (exit 1). Run by
    /// fastpatch-health-check.service before boot-complete.target: the engine marks a first
    /// boot after an update good once that target is reached. A slot already marked good
    /// passes at once.
    HealthCheck(ConfigArgs),
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

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
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
        EngineCommand::HealthCheck(args) => {
            let cfg = args.load()?;
            runtime()?.block_on(health_check(&cfg))
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

/// `fastpatch engine health-check`: the gate's checks, judged by the same pure decision.
async fn health_check(cfg: &DaemonConfig) -> Result<()> {
    use crate::health::{decide, HealthDecision, OnUnhealthy};
    use fastpatch_boot_control::BootControl;
    let boot = super::boot_control(cfg).context("finding the booted slot")?;
    let booted = boot
        .slot_state(boot.booted())
        .context("reading the booted slot's attributes")?;
    let started = std::time::Instant::now();
    loop {
        let obs = super::health::observe(&cfg.health).await;
        let d = decide(
            booted.attrs.successful,
            &obs,
            started.elapsed(),
            cfg.health_timeout(),
            OnUnhealthy::ReportOnly,
        );
        match d {
            HealthDecision::AlreadyGood => {
                println!("slot {} is marked good: nothing to judge", booted.slot);
                return Ok(());
            }
            HealthDecision::MarkGood => {
                println!(
                    "health checks passed on the first boot of slot {} ({} units, {} commands)",
                    booted.slot,
                    cfg.health.units.len(),
                    cfg.health.commands.len()
                );
                return Ok(());
            }
            HealthDecision::Wait => {
                println!("waiting: {}", obs.failing.join("; "));
                tokio::time::sleep(Duration::from_secs(cfg.health.interval_secs.max(1))).await;
            }
            HealthDecision::Reboot { reason } | HealthDecision::ReportOnly { reason } => {
                anyhow::bail!("{reason}")
            }
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
