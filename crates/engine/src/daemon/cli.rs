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
