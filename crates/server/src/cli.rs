//! The `fastpatch-server` command line: serve (the default) and admin commands
//! that work directly on the database (SQLite file or PostgreSQL).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::store::{InstanceFilter, Store};

mod catalog;
mod fleet;
mod parse;
mod serve;
mod sync;

pub use catalog::{DeltaCmd, PublishArgs, RegisterArgs};
pub use parse::{opt_limit, parse_days, parse_extra_file, parse_hours, print_group};
pub use serve::{serve, ServeArgs};
pub use sync::{ServeSyncArgs, SyncArgs, FLATCAR_UPSTREAM};

#[derive(Debug, Parser)]
#[command(
    name = "fastpatch-server",
    version,
    about = "Omaha update server for Flatcar-compatible machines"
)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Where the SQLite database and hosted payloads live (created on first start).
    #[arg(
        long,
        global = true,
        env = "FASTPATCH_DATA_DIR",
        default_value = "fastpatch-data"
    )]
    pub data_dir: PathBuf,
    /// Use PostgreSQL instead of SQLite, e.g. postgres://user@host/db.
    #[arg(long, global = true, env = "FASTPATCH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Application id for admin commands (default: Flatcar's).
    #[arg(long, global = true, default_value = fastpatch_omaha::FLATCAR_APP_ID)]
    pub app: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (what happens with no subcommand).
    Serve(ServeArgs),
    /// Hash a payload file, store it, register the package (and optionally point a channel at it).
    ///
    /// A server running with --delta-signing-key then makes deltas to this version from the
    /// versions the channel offered before it (within its scan period, 30 s).
    Publish(PublishArgs),
    /// Register a package hosted elsewhere (a CDN) from its size and hashes
    /// (hex or base64), with optional extra files; nothing is downloaded.
    Register(RegisterArgs),
    /// List packages, their extra files and the deltas made to them.
    Packages,
    /// Copy a channel's version to another channel (bit for bit: the same packages).
    Promote {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// List channels or point one at a version.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// List, show, create/update, halt or resume groups.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Mandatory intermediate versions.
    #[command(subcommand)]
    Floor(FloorCmd),
    /// Mirror channels of an upstream Omaha server (Flatcar's public one by default) once:
    /// download each new version with its extra files (resuming an interrupted download),
    /// check sizes, hashes and, with --key, signatures, host it, and move the local channel.
    /// `serve --sync-upstream URL` does the same in the background.
    Sync(SyncArgs),
    /// Delta payloads (`packages` lists them).
    #[command(subcommand)]
    Delta(DeltaCmd),
    /// Serve one file's bytes as the answer to every request, on the server's own HTTP
    /// threads (benchmarks: what the HTTP stack alone costs, beside nginx; see
    /// scripts/bench-server).
    #[command(hide = true)]
    ServeStatic {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        file: PathBuf,
        /// Serving threads (default: one per core, as `serve`).
        #[arg(long)]
        http_threads: Option<usize>,
    },
    /// Register synthetic instances (benchmarks, dashboard scale tests).
    #[command(hide = true)]
    SeedInstances {
        #[arg(long)]
        count: u64,
        #[arg(long, default_value = "stable")]
        group: String,
        #[arg(long, default_value = "0.0.0")]
        version: String,
        #[arg(long, default_value = "seed-")]
        prefix: String,
    },
    /// List instances (keyset pages: pass --after with the last id printed).
    Instances {
        #[arg(long)]
        group: Option<String>,
        /// One of undefined, granted, downloading, downloaded, installed, complete, error, on-hold.
        #[arg(long)]
        status: Option<crate::policy::InstanceStatus>,
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        search: Option<String>,
        #[arg(long)]
        silent_days: Option<i64>,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChannelCmd {
    List,
    Set { name: String, version: String },
    History { name: String },
}

#[derive(Debug, Subcommand)]
pub enum FloorCmd {
    List,
    Add { version: String },
    Remove { version: String },
}

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    List,
    Show {
        name: String,
    },
    /// Create a group or change its policy; only the options given change.
    Set(GroupSet),
    Halt {
        name: String,
        #[arg(long)]
        reason: Option<String>,
    },
    Resume {
        name: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct GroupSet {
    pub name: String,
    #[arg(long)]
    pub channel: Option<String>,
    #[arg(long)]
    pub enabled: Option<bool>,
    /// A number or "none".
    #[arg(long)]
    pub max_per_period: Option<String>,
    #[arg(long)]
    pub period_secs: Option<i64>,
    /// A number or "none".
    #[arg(long)]
    pub max_concurrent: Option<String>,
    #[arg(long)]
    pub timeout_secs: Option<i64>,
    #[arg(long)]
    pub office_hours: Option<bool>,
    /// IANA time zone, e.g. Europe/Berlin.
    #[arg(long)]
    pub tz: Option<String>,
    /// Comma-separated days, e.g. mon,tue,wed,thu,fri.
    #[arg(long)]
    pub days: Option<String>,
    /// Local window, e.g. 09:00-17:00 (may wrap midnight).
    #[arg(long)]
    pub hours: Option<String>,
    #[arg(long)]
    pub safe_mode: Option<bool>,
    /// Staged rollout duration in seconds (0 = everyone at once).
    #[arg(long)]
    pub rollout_secs: Option<i64>,
}

async fn open(db: &DbArgs) -> Result<Store> {
    let store = match &db.database_url {
        Some(url) => Store::open(url).await,
        None => Store::open_data_dir(&db.data_dir).await,
    }
    .context("opening the database")?;
    store
        .ensure_defaults(chrono::Utc::now().timestamp())
        .await?;
    Ok(store)
}

pub async fn run(cli: Cli) -> Result<()> {
    let db = &cli.db;
    let app = fastpatch_omaha::normalize_appid(&db.app);
    let now = chrono::Utc::now().timestamp();
    match cli.command {
        // No subcommand: `serve` with its defaults and FASTPATCH_* environment.
        None => {
            let args = match Cli::try_parse_from(["fastpatch-server", "serve"]) {
                Ok(Cli {
                    command: Some(Command::Serve(args)),
                    ..
                }) => args,
                _ => ServeArgs::default(),
            };
            serve(db, &args).await
        }
        Some(Command::Serve(args)) => serve(db, &args).await,
        Some(Command::ServeStatic {
            listen,
            file,
            http_threads,
        }) => serve::serve_static(listen, &file, http_threads).await,
        Some(Command::Publish(a)) => catalog::publish(db, &app, now, a).await,
        Some(Command::Register(a)) => catalog::register(db, &app, now, a).await,
        Some(Command::Packages) => catalog::packages(db, &app).await,
        Some(Command::Promote { from, to }) => fleet::promote(db, &app, now, &from, &to).await,
        Some(Command::Channel(cmd)) => fleet::channel(db, &app, now, cmd).await,
        Some(Command::Group(cmd)) => fleet::group(db, &app, now, cmd).await,
        Some(Command::Floor(cmd)) => fleet::floor(db, &app, now, cmd).await,
        Some(Command::Delta(cmd)) => catalog::delta(db, &app, now, cmd).await,
        Some(Command::Sync(a)) => sync::sync(db, &app, a).await,
        Some(Command::SeedInstances {
            count,
            group,
            version,
            prefix,
        }) => fleet::seed_instances(db, &app, now, count, &group, &version, &prefix).await,
        Some(Command::Instances {
            group,
            status,
            version,
            search,
            silent_days,
            after,
            limit,
        }) => {
            let filter = InstanceFilter {
                app_id: Some(app),
                group,
                status,
                version,
                silent_for_secs: silent_days.map(|d| d * 86400),
                search,
                after,
                limit: Some(limit),
            };
            fleet::instances(db, &filter, now).await
        }
    }
}
