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

/// The settings locksmithd reads, for `--help`.
const SETTINGS_HELP: &str = "\
Settings: /etc/flatcar/update.conf (then /etc/coreos, /usr/share/flatcar, /usr/share/coreos;
the first file that sets a key wins), each overridden by the LOCKSMITHD_<KEY> environment
variable. In update.conf a key may be written plain or with the LOCKSMITHD_ prefix.
  REBOOT_STRATEGY         best-effort (the default: etcd-lock when ENDPOINT is set and
                          etcd answers at start, else reboot), etcd-lock, reboot, fleetlock,
                          off
  ENDPOINT                etcd endpoints, comma-separated (etcd-lock without it:
                          http://127.0.0.1:2379)
  ETCD_CAFILE, ETCD_CERTFILE, ETCD_KEYFILE, ETCD_USERNAME, ETCD_PASSWORD
  LOCKSMITHD_GROUP        the lock group (prefixed only: GROUP is the update group)
  LEASE_TTL               tie the hold to an etcd lease of this length (e.g. 150s), so a
                          machine that dies holding its slot frees it; it is refreshed right
                          before the reboot and must exceed a reboot up to locksmithd's start
  LOCK_RETRY              how often to retry a full semaphore (default 30s)
  FLEETLOCK_URL, FLEETLOCK_CA_FILE   the FleetLock server (strategy fleetlock)
  REBOOT_WINDOW_START, REBOOT_WINDOW_LENGTH, REBOOT_WINDOW_TIMEZONE   e.g. \"Thu 04:00\", 1h
  REBOOT_DELAY            wait after telling logged-in users (default 300s); BROADCAST=false
                          tells nobody
  BOOT_GOOD_COMMAND       succeeds once a boot is good, then the slot is released (default on
                          systemd: systemctl is-active boot-complete.target)
  REBOOT_COMMAND          instead of logind's Reboot
  REBOOT_METHOD           firmware (default) or kexec: load the next slot's kernel with
                          KEXEC_LOAD_COMMAND (default: fastpatch boot kexec, which spends the
                          slot's boot try as the chooser does) and start systemd's
                          kexec.target, skipping firmware and boot loader; if that fails the
                          firmware reboot follows
  METRICS_SOCKET          Prometheus text (default /run/locksmith/metrics.sock; none: off)";

/// `locksmithd` arguments (the daemon reads the rest from update.conf and `LOCKSMITHD_*`).
#[derive(Debug, clap::Parser)]
#[command(
    name = "locksmithd",
    version,
    about = "Reboot coordination daemon (locksmith compatible): reboots the machine when the \
             update engine has staged an update, per REBOOT_STRATEGY in update.conf",
    after_help = SETTINGS_HELP
)]
pub struct LocksmithdArgs {
    /// Root directory for update.conf, coordinator.conf, machine-id, utmp (tests run unprivileged).
    #[arg(long, env = "LOCKSMITHD_ROOT", default_value = "/")]
    pub root: PathBuf,
    /// Log filter.
    #[arg(long, env = "LOCKSMITHD_LOG", default_value = "info")]
    pub log: String,
}

/// Logging to stderr with `filter` (`fallback` when it does not parse); colour only on a
/// terminal, so a journal, a file or a pipe gets plain text.
pub fn init_logging(filter: &str, fallback: &str) {
    fastpatch_logging::init(filter, fallback);
}

/// Runs locksmithd until it fails.
pub fn run_locksmithd(args: LocksmithdArgs) -> anyhow::Result<()> {
    use crate::config::{DaemonConfig, Settings};
    use crate::dbus::{connect, DbusEngine};
    init_logging(&args.log, "info");
    let settings = Settings::load(&args.root, std::env::vars()).context("reading update.conf")?;
    let cfg = DaemonConfig::from_settings(&args.root, &settings).context("configuration")?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let conn = connect(cfg.dbus_address.as_deref())
            .await
            .context("connecting to D-Bus")?;
        crate::daemon::run(cfg, DbusEngine { conn })
            .await
            .context("locksmithd")
    })
}

/// Runs locksmithctl with `args` (without argv0); returns its exit code.
pub fn run_locksmithctl(args: &[String]) -> i32 {
    let filter = std::env::var("LOCKSMITHCTL_LOG").unwrap_or_else(|_| "error".into());
    init_logging(&filter, "error");
    crate::ctl::run(args, &mut std::io::stdout(), &mut std::io::stderr())
}

/// A binary started as `locksmithd` or `locksmithctl` (e.g. the fastpatch binary linked under
/// those names in an OS image) behaves exactly like that program: its exit code, or `None`
/// for any other name.
pub fn dispatch_argv0() -> Option<i32> {
    let mut args = std::env::args();
    let argv0 = args.next()?;
    let name = std::path::Path::new(&argv0)
        .file_name()?
        .to_str()?
        .to_owned();
    match name.as_str() {
        "locksmithd" => {
            use clap::Parser;
            let parsed = LocksmithdArgs::parse();
            Some(match run_locksmithd(parsed) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            })
        }
        "locksmithctl" => Some(run_locksmithctl(&args.collect::<Vec<_>>())),
        _ => None,
    }
}
