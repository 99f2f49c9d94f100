//! `fastpatch-server serve`: its options, the generated admin token, the start banner and the
//! signal handling around [`Server::start`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use super::DbArgs;
use crate::{Config, Retention, Server};

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
    /// Make delta payloads, signed with this PEM private key (the key the full payloads
    /// are signed with: they must verify with it to be used). Without it, every machine
    /// gets full payloads.
    #[arg(long, env = "FASTPATCH_DELTA_SIGNING_KEY")]
    pub delta_signing_key: Option<PathBuf>,
    /// For each channel's version, make deltas from this many versions the channel
    /// offered before it (machines still on older ones get the full payload).
    #[arg(long, default_value_t = 2, env = "FASTPATCH_DELTA_SOURCES")]
    pub delta_sources: usize,
    #[command(flatten)]
    pub sync: super::ServeSyncArgs,
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
            delta_signing_key: None,
            delta_sources: 2,
            sync: super::ServeSyncArgs::default(),
        }
    }
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
    config.deltas = args.delta_signing_key.as_ref().map(|key| {
        let mut d = crate::deltas::DeltaSettings::new(key.clone());
        d.per_channel = args.delta_sources;
        d
    });
    config.sync = args
        .sync
        .settings(&db.app)
        .context("the --sync-* options")?;
    let sync_note = match &config.sync {
        Some(s) => format!(
            "on, {} ({}) from {}, every {} min",
            s.channels.join(", "),
            s.arches.join(", "),
            s.upstream,
            s.every.as_secs().div_ceil(60)
        ),
        None => {
            "off (--sync-upstream URL mirrors an upstream's channels, e.g. Flatcar's)".to_owned()
        }
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
    match &args.delta_signing_key {
        Some(key) => println!(
            "  delta payloads:   on, from the previous {} versions of each channel, signed with {}",
            args.delta_sources,
            key.display()
        ),
        None => println!("  delta payloads:   off (--delta-signing-key turns them on)"),
    }
    println!("  upstream sync:    {sync_note}");
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

/// The benchmark reference: `file`'s bytes for every request (any method, any path),
/// served like `serve` serves (same threads, sockets and HTTP library), until SIGINT or
/// SIGTERM.
pub async fn serve_static(
    listen: std::net::SocketAddr,
    file: &std::path::Path,
    http_threads: Option<usize>,
) -> Result<()> {
    let body = axum::body::Bytes::from(
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))?,
    );
    let router = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move {
            (
                [(axum::http::header::CONTENT_TYPE, "text/xml; charset=utf-8")],
                body,
            )
        }
    });
    let threads = http_threads.unwrap_or_else(crate::default_http_threads);
    let (addr, listeners) =
        crate::serve::bind(listen, threads).with_context(|| format!("binding {listen}"))?;
    let signal = shutdown_signal()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let front = crate::front::MakeFront::new(router, None);
    let mut served = crate::serve::spawn(listeners, front, None, stopped)
        .context("starting the HTTP threads")?;
    println!("serving {} on http://{addr}", file.display());
    signal.await;
    let _ = stop.send(true);
    served.stopped().await;
    served.finish().await;
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
