//! The `fastpatch-server` command line: serve (the default) and admin commands
//! that work directly on the database (SQLite file or PostgreSQL).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::store::{ExternalPackage, Group, InstanceFilter, Store};
use crate::{Config, Retention, Server};

mod parse;
pub use parse::{opt_limit, parse_days, parse_extra_file, parse_hours, print_group};

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
    Publish {
        file: PathBuf,
        #[arg(long)]
        version: String,
        #[arg(long, default_value = "amd64")]
        arch: String,
        /// Name clients download it as (default: the file's name).
        #[arg(long)]
        file_name: Option<String>,
        /// Don't host it: clients download from this codebase URL (a CDN) + file name.
        #[arg(long)]
        base_url: Option<String>,
        /// Point this channel at the new version.
        #[arg(long)]
        channel: Option<String>,
        /// An extra file served next to the payload (repeatable).
        #[arg(long = "extra-file")]
        extra_files: Vec<PathBuf>,
    },
    /// Register a package hosted elsewhere (a CDN) from its size and hashes
    /// (hex or base64), with optional extra files; nothing is downloaded.
    Register {
        #[arg(long)]
        version: String,
        /// Codebase ending in / (with --file-name) or the payload's full URL.
        #[arg(long)]
        url: String,
        #[arg(long)]
        file_name: Option<String>,
        #[arg(long, default_value = "amd64")]
        arch: String,
        #[arg(long)]
        size: u64,
        #[arg(long)]
        sha1: String,
        #[arg(long)]
        sha256: String,
        /// An extra file next to the payload: NAME:SIZE:SHA1:SHA256 (repeatable).
        #[arg(long = "extra-file")]
        extra_files: Vec<String>,
        /// Point this channel at the new version.
        #[arg(long)]
        channel: Option<String>,
    },
    /// List packages and their extra files.
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
        #[arg(long)]
        status: Option<String>,
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

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8080", env = "FASTPATCH_LISTEN")]
    pub listen: SocketAddr,
    /// URL machines reach this server at (used in payload URLs).
    #[arg(long, env = "FASTPATCH_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Admin bearer token(s); default: generated once into <data-dir>/admin-token.
    #[arg(long, env = "FASTPATCH_ADMIN_TOKEN")]
    pub admin_token: Vec<String>,
    #[arg(long, env = "FASTPATCH_VIEWER_TOKEN")]
    pub viewer_token: Vec<String>,
    /// A reverse proxy (address or network, e.g. 127.0.0.1 or 10.0.0.0/8) whose
    /// X-Forwarded-For header names the client; repeat or separate with commas. From any
    /// other peer the header is ignored. Default: none (the peer's address is recorded).
    #[arg(long, env = "FASTPATCH_TRUSTED_PROXY", value_delimiter = ',', value_parser = parse_proxy)]
    pub trusted_proxy: Vec<ipnet::IpNet>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key). Dashboard session cookies
    /// are then marked Secure.
    #[arg(
        long,
        env = "FASTPATCH_TLS_CERT",
        requires = "tls_key",
        value_name = "PEM"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        env = "FASTPATCH_TLS_KEY",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    pub tls_key: Option<PathBuf>,
    /// Keep events, history and activity this many days.
    #[arg(long, default_value_t = 90)]
    pub retention_days: i64,
    /// Forget instances silent for this many days.
    #[arg(long, default_value_t = 180)]
    pub silent_instance_days: i64,
    /// Threads serving HTTP, each with its own socket and runtime (default: one per core).
    #[arg(long, env = "FASTPATCH_HTTP_THREADS")]
    pub http_threads: Option<usize>,
}

impl Default for ServeArgs {
    fn default() -> Self {
        ServeArgs {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            admin_token: Vec::new(),
            viewer_token: Vec::new(),
            trusted_proxy: Vec::new(),
            tls_cert: None,
            tls_key: None,
            retention_days: 90,
            silent_instance_days: 180,
            http_threads: None,
        }
    }
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

fn admin_token(data_dir: &Path) -> Result<(String, PathBuf)> {
    let path = data_dir.join("admin-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            keep_private(&path)?;
            return Ok((t.trim().to_owned(), path));
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(f, "{token}")?;
    }
    Ok((token, path))
}

/// `--trusted-proxy`: a network (`10.0.0.0/8`) or one address (`127.0.0.1`, `::1`).
fn parse_proxy(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8)"))
}

/// The admin token file stays readable by its owner only: a mode widened by hand (or by a
/// copy) is put back to 0600, with a warning that says so.
fn keep_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            "the admin token file was readable by others (mode {:o}); set back to 600",
            mode & 0o777
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting {} to mode 600", path.display()))?;
    }
    Ok(())
}

pub async fn serve(db: &DbArgs, args: &ServeArgs) -> Result<()> {
    let mut config = Config::new(&db.data_dir);
    config.database_url = db.database_url.clone();
    config.listen = args.listen;
    config.public_url = args.public_url.clone();
    config.viewer_tokens = args.viewer_token.clone();
    config.trusted_proxies = args.trusted_proxy.clone();
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(crate::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    if let Some(n) = args.http_threads {
        config.http_threads = n.max(1);
    }
    config.retention = Retention {
        keep_days: args.retention_days,
        silent_instance_days: args.silent_instance_days,
        ..Retention::default()
    };
    let token_note = if args.admin_token.is_empty() {
        let (token, path) = admin_token(&db.data_dir)?;
        config.admin_tokens = vec![token];
        format!("admin token: in {}", path.display())
    } else {
        config.admin_tokens = args.admin_token.clone();
        "admin token: as given".to_owned()
    };
    let handle = Server::start(config).await.context("starting the server")?;
    let signal = shutdown_signal()?;
    let data_dir = std::fs::canonicalize(&db.data_dir).unwrap_or(db.data_dir.clone());
    let database = db
        .database_url
        .as_deref()
        .map(|u| u.split('@').next_back().unwrap_or(u).to_owned())
        .unwrap_or_else(|| format!("SQLite {}", data_dir.join("fastpatch.db").display()));
    println!(
        "fastpatch-server listening on http://{}",
        handle.local_addr()
    );
    println!(
        "  Omaha endpoint:   {}/v1/update/   (Flatcar: SERVER= in /etc/flatcar/update.conf)",
        handle.base_url()
    );
    println!(
        "  admin API:        {}/api/v1/  (OpenAPI: /api/v1/openapi.json; {token_note})",
        handle.base_url()
    );
    println!(
        "  dashboard:        {}/ui/   (log in with the admin token, or a --viewer-token for read-only)",
        handle.base_url()
    );
    println!(
        "  metrics, health:  {0}/metrics  {0}/health",
        handle.base_url()
    );
    println!("  database:         {database}");
    println!("  data dir:         {}", data_dir.display());
    println!("Publish a first payload and offer it on the stable channel:");
    println!(
        "  fastpatch-server --data-dir {} publish flatcar_production_update.gz --version 3815.2.0 --channel stable",
        data_dir.display()
    );
    let stop = handle.stopper();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    handle.wait().await;
    Ok(())
}

/// SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled, so call it before announcing the server.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
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
        Some(Command::Publish {
            file,
            version,
            arch,
            file_name,
            base_url,
            channel,
            extra_files,
        }) => {
            let store = open(db).await?;
            let pkg = crate::payloads::publish_with_files(
                &store,
                &db.data_dir,
                &crate::payloads::Publish {
                    app_id: &app,
                    version: &version,
                    arch: &arch,
                    file: &file,
                    file_name: file_name.as_deref(),
                    base_url: base_url.as_deref(),
                },
                &extra_files,
                now,
            )
            .await
            .with_context(|| format!("publishing {}", file.display()))?;
            println!(
                "published {} {} as {} ({} bytes, sha256 {}, sha1 {}), package id {}",
                pkg.version,
                pkg.arch,
                pkg.file_name,
                pkg.size,
                pkg.sha256_b64,
                pkg.sha1_b64,
                pkg.id
            );
            if let Some(ch) = channel {
                store.set_channel(&app, &ch, &version, now).await?;
                println!("channel {ch} now offers {version}");
            }
            store.close().await;
            Ok(())
        }
        Some(Command::Register {
            version,
            url,
            file_name,
            arch,
            size,
            sha1,
            sha256,
            extra_files,
            channel,
        }) => {
            let ext = ExternalPackage {
                version: version.clone(),
                arch: Some(arch),
                url,
                file_name,
                size,
                sha1,
                sha256,
                extra_files: extra_files
                    .iter()
                    .map(|e| parse_extra_file(e))
                    .collect::<Result<_>>()?,
            };
            let store = open(db).await?;
            let (pkg, files) = store
                .register_external(&app, &ext, now)
                .await
                .context("registering the package")?;
            println!(
                "registered {} {} at {}{} ({} bytes, {} extra files), package id {}",
                pkg.version,
                pkg.arch,
                pkg.base_url.as_deref().unwrap_or(""),
                pkg.file_name,
                pkg.size,
                files.len(),
                pkg.id
            );
            if let Some(ch) = channel {
                store.set_channel(&app, &ch, &version, now).await?;
                println!("channel {ch} now offers {version}");
            }
            store.close().await;
            Ok(())
        }
        Some(Command::Packages) => {
            let store = open(db).await?;
            for p in store.packages(&app).await? {
                println!(
                    "{:<12} {:<6} {:<32} {:>12} {} {}",
                    p.version,
                    p.arch,
                    p.file_name,
                    p.size,
                    p.sha256_b64,
                    p.base_url.as_deref().unwrap_or("(hosted)")
                );
                for f in store.package_files(&p.id).await? {
                    println!("  + {:<30} {:>12} {}", f.name, f.size, f.sha256_b64);
                }
            }
            Ok(())
        }
        Some(Command::Promote { from, to }) => {
            let store = open(db).await?;
            let v = store.promote(&app, &from, &to, now).await?;
            println!("channel {to} now offers {v} (from {from})");
            Ok(())
        }
        Some(Command::Channel(cmd)) => {
            let store = open(db).await?;
            match cmd {
                ChannelCmd::List => {
                    for c in store.channels(&app).await? {
                        println!("{:<12} {}", c.name, c.version.as_deref().unwrap_or("-"));
                    }
                }
                ChannelCmd::Set { name, version } => {
                    store.set_channel(&app, &name, &version, now).await?;
                    println!("channel {name} now offers {version}");
                }
                ChannelCmd::History { name } => {
                    for (v, at) in store.channel_history(&app, &name, 50).await? {
                        println!(
                            "{} {v}",
                            chrono::DateTime::from_timestamp(at, 0)
                                .unwrap_or_default()
                                .to_rfc3339()
                        );
                    }
                }
            }
            Ok(())
        }
        Some(Command::Group(cmd)) => {
            let store = open(db).await?;
            match cmd {
                GroupCmd::List => {
                    for g in store.groups(&app).await? {
                        print_group(&g);
                    }
                }
                GroupCmd::Show { name } => {
                    let g = store
                        .group(&app, &name)
                        .await?
                        .with_context(|| format!("no group {name}"))?;
                    print_group(&g);
                    for (s, n) in store.status_counts(&app, &name).await? {
                        println!("  {s:<12} {n}");
                    }
                }
                GroupCmd::Set(set) => {
                    let mut g = match store.group(&app, &set.name).await? {
                        Some(g) => g,
                        None => {
                            Group::new(&app, &set.name, set.channel.as_deref().unwrap_or(&set.name))
                        }
                    };
                    set.apply(&mut g)?;
                    store.upsert_group(&g).await?;
                    print_group(
                        &store
                            .group(&app, &set.name)
                            .await?
                            .context("group vanished")?,
                    );
                }
                GroupCmd::Halt { name, reason } => {
                    store
                        .set_halted(
                            &app,
                            &name,
                            true,
                            Some(reason.as_deref().unwrap_or("halted by an operator")),
                            now,
                        )
                        .await?;
                    println!("group {name} halted");
                }
                GroupCmd::Resume { name } => {
                    store.set_halted(&app, &name, false, None, now).await?;
                    println!("group {name} resumed");
                }
            }
            Ok(())
        }
        Some(Command::Floor(cmd)) => {
            let store = open(db).await?;
            match cmd {
                FloorCmd::List => {}
                FloorCmd::Add { version } => store.set_floor(&app, &version, true).await?,
                FloorCmd::Remove { version } => store.set_floor(&app, &version, false).await?,
            }
            for f in store.floors(&app).await? {
                println!("{f}");
            }
            Ok(())
        }
        Some(Command::SeedInstances {
            count,
            group,
            version,
            prefix,
        }) => {
            let store = open(db).await?;
            let n = store
                .seed_instances(&app, &group, &prefix, count, &version, now)
                .await?;
            println!("registered {n} instances in group {group}");
            Ok(())
        }
        Some(Command::Instances {
            group,
            status,
            version,
            search,
            silent_days,
            after,
            limit,
        }) => {
            let store = open(db).await?;
            let rows = store
                .list_instances(
                    &InstanceFilter {
                        app_id: Some(app),
                        group,
                        status,
                        version,
                        silent_for_secs: silent_days.map(|d| d * 86400),
                        search,
                        after,
                        limit: Some(limit),
                    },
                    now,
                )
                .await?;
            for r in &rows {
                println!(
                    "{:<34} {:<10} {:<12} {:<12} {:<8} {}",
                    r.machine_id,
                    r.group_name,
                    r.version,
                    r.status,
                    r.arch,
                    r.alias.as_deref().unwrap_or("")
                );
            }
            Ok(())
        }
    }
}
