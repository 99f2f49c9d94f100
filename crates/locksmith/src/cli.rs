//! `fastpatch fleetlock serve`: clap arguments and the run function (the fastpatch binary only
//! dispatches here).

use std::path::PathBuf;

use anyhow::Context;

use crate::etcd::{EtcdConfig, EtcdStore};
use crate::fleetlock::{self, GroupConfig};

/// FleetLock subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum FleetlockCommand {
    /// Serve the FleetLock protocol (Zincati's reboot lock) on the etcd reboot semaphore.
    Serve(ServeArgs),
}

/// `fastpatch fleetlock serve` arguments.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3333")]
    pub listen: String,
    /// Group slot counts, `GROUP=SLOTS` per line; re-read when it changes.
    #[arg(long)]
    pub groups: PathBuf,
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "FLEETLOCK_ETCD_ENDPOINT",
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoint: String,
    #[arg(long)]
    pub etcd_cafile: Option<PathBuf>,
    #[arg(long)]
    pub etcd_certfile: Option<PathBuf>,
    #[arg(long)]
    pub etcd_keyfile: Option<PathBuf>,
    #[arg(long, env = "FLEETLOCK_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    #[arg(long, env = "FLEETLOCK_ETCD_PASSWORD")]
    pub etcd_password: Option<String>,
}

/// Runs a FleetLock subcommand.
pub fn run(cmd: FleetlockCommand) -> anyhow::Result<()> {
    let FleetlockCommand::Serve(a) = cmd;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let mut etcd = EtcdConfig::local().with_endpoints(&a.endpoint);
        etcd.ca_file = a.etcd_cafile;
        etcd.cert_file = a.etcd_certfile;
        etcd.key_file = a.etcd_keyfile;
        etcd.username = a.etcd_username;
        etcd.password = a.etcd_password;
        let store = EtcdStore::connect(&etcd)
            .await
            .context("Error initializing etcd client")?;
        let groups = GroupConfig::new(a.groups.clone());
        if groups.groups().is_empty() {
            anyhow::bail!(
                "{}: no groups configured (want GROUP=SLOTS lines)",
                a.groups.display()
            );
        }
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        tracing::info!(listen = %a.listen, "FleetLock server ready");
        fleetlock::serve(listener, fleetlock::Server::new(store, groups))
            .await
            .context("serving FleetLock")
    })
}
