//! fastpatch-server: an Omaha v3 update server with rollout policies.
//!
//! Start one in a test:
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let handle = fastpatch_server::Server::start(fastpatch_server::Config::for_tests(dir.path())).await?;
//! let url = format!("{}/v1/update/", handle.base_url());
//! # let _ = url;
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

pub mod api;
pub mod cli;
pub mod clock;
pub mod dashboard;
pub mod deltas;
mod front;
pub mod http;
pub mod metrics;
pub mod omaha;
pub mod openapi;
pub mod payloads;
pub mod policy;
mod serve;
pub mod served;
pub mod store;
pub mod sync;
pub mod throttle;
pub mod tls;
pub mod variants;
pub mod version;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use clock::{Clock, ManualClock, SystemClock};
pub use store::Store;

/// Retention of old data (a background job prunes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events, status history, grants and activity older than this are deleted.
    pub keep_days: i64,
    /// Instances that have not checked in for this long are deleted.
    pub silent_instance_days: i64,
    /// How often the job runs (also the safe-mode timeout sweep).
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_days: 90,
            silent_instance_days: 180,
            interval: Duration::from_secs(3600),
        }
    }
}

#[derive(Clone)]
pub struct Config {
    /// SQLite file and hosted payloads live here.
    pub data_dir: PathBuf,
    /// `postgres://…` (or an explicit `sqlite://…`); default: SQLite under `data_dir`.
    pub database_url: Option<String>,
    pub listen: SocketAddr,
    /// Threads serving HTTP, each with its own socket and runtime (default: one per core).
    pub http_threads: usize,
    /// Base URL clients reach this server at (payload URLs); default `http://<listen addr>`.
    pub public_url: Option<String>,
    pub admin_tokens: Vec<String>,
    pub viewer_tokens: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed (addresses or networks); from any other
    /// peer the header is ignored. Default: none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Serve HTTPS with this certificate and key (default: plain HTTP).
    pub tls: Option<tls::TlsFiles>,
    pub retention: Retention,
    /// How often grants are checked for safe-mode timeouts.
    pub timeout_sweep: Duration,
    /// How often last-check timestamps kept in memory are written (also at
    /// graceful shutdown). A crash loses at most this much last-seen time.
    pub checkin_flush: Duration,
    pub clock: Arc<dyn Clock>,
    /// Cap on Omaha request bodies.
    pub max_body_bytes: usize,
    /// Create the default Flatcar app, channels and groups on an empty database.
    pub seed_defaults: bool,
    /// Make delta payloads in the background (needs the payload signing key); None: off.
    pub deltas: Option<deltas::DeltaSettings>,
    /// Mirror channels of an upstream Omaha server in the background; None: off.
    pub sync: Option<sync::SyncSettings>,
}

impl Config {
    /// Defaults: loopback 127.0.0.1:8080, SQLite under `data_dir`, no tokens.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            database_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            http_threads: default_http_threads(),
            public_url: None,
            admin_tokens: Vec::new(),
            viewer_tokens: Vec::new(),
            trusted_proxies: Vec::new(),
            tls: None,
            retention: Retention::default(),
            timeout_sweep: Duration::from_secs(60),
            checkin_flush: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
            max_body_bytes: 64 * 1024,
            seed_defaults: true,
            deltas: None,
            sync: None,
        }
    }

    /// Port 0 on loopback, fixed tokens `admin-token` / `viewer-token`.
    pub fn for_tests(data_dir: &Path) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_threads: 2,
            admin_tokens: vec!["admin-token".into()],
            viewer_tokens: vec!["viewer-token".into()],
            ..Config::new(data_dir)
        }
    }
}

/// Shared by all handlers.
pub struct AppState {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub metrics: metrics::Metrics,
    pub public_url: String,
    pub data_dir: PathBuf,
    pub admin_tokens: Vec<String>,
    pub viewer_tokens: Vec<String>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub max_body_bytes: usize,
    /// Refused dashboard logins per client address.
    pub login_throttle: throttle::LoginThrottle,
    /// Session cookies carry `Secure` (served over TLS, or behind an https public URL).
    pub secure_cookies: bool,
    /// Wakes the delta worker (a channel moved).
    pub delta_wake: tokio::sync::Notify,
    /// Payload bytes sent, per package or delta id, not yet added to the store.
    pub served: served::ServedBytes,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("opening the database: {0}")]
    Store(#[from] store::StoreError),
    #[error("loading the delta signing key: {0}")]
    DeltaKey(fastpatch_payload::PayloadError),
    #[error("binding {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

pub struct Server;

/// A running server: its address, its store, and a way to stop it.
pub struct ServerHandle {
    addr: SocketAddr,
    base_url: String,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    http: serve::HttpThreads,
    jobs: tokio::task::JoinHandle<()>,
    deltas: Option<tokio::task::JoinHandle<()>>,
    sync: Option<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:PORT` (or the configured public URL).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
    pub fn store(&self) -> &Store {
        &self.state.store
    }
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }
    /// Stops accepting, lets in-flight requests finish, writes the
    /// last-check timestamps kept in memory, closes the database.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.wait().await;
    }
    /// Waits until the server stops on its own (e.g. ctrl-c in the binary),
    /// then finishes like [`ServerHandle::shutdown`].
    pub async fn wait(mut self) {
        self.http.stopped().await;
        // The jobs loop sees the same stop signal and ends between two jobs.
        let _ = self.stop.send(true);
        let _ = self.jobs.await;
        if let Some(deltas) = self.deltas.take() {
            let _ = deltas.await;
        }
        if let Some(sync) = self.sync.take() {
            let _ = sync.await;
        }
        self.state.flush_served().await;
        let now = self.state.clock.now().timestamp();
        match self.state.store.flush_last_checks(now).await {
            Ok(n) => info!(written = n, "last-check timestamps written"),
            Err(e) => warn!(error = %e, "could not write last-check timestamps at shutdown"),
        }
        self.state.store.close().await;
        self.http.finish().await;
    }
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

impl Server {
    pub async fn start(config: Config) -> Result<ServerHandle, StartError> {
        // Certificate problems stop the start before anything else is touched.
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
        let delta_key = match &config.deltas {
            Some(d) => Some(Arc::new(
                deltas::DeltaKey::load(&d.signing_key).map_err(StartError::DeltaKey)?,
            )),
            None => None,
        };
        let store = match &config.database_url {
            Some(url) => Store::open(url).await?,
            None => Store::open_data_dir(&config.data_dir).await?,
        };
        if config.seed_defaults {
            store
                .ensure_defaults(config.clock.now().timestamp())
                .await?;
        }
        let (addr, listeners) =
            serve::bind(config.listen, config.http_threads).map_err(|source| StartError::Bind {
                addr: config.listen,
                error: source,
            })?;
        let base_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| {
                let scheme = if tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{addr}")
            })
            .trim_end_matches('/')
            .to_owned();
        let state = Arc::new(AppState {
            store,
            clock: config.clock.clone(),
            metrics: metrics::Metrics::default(),
            public_url: base_url.clone(),
            data_dir: config.data_dir.clone(),
            admin_tokens: config.admin_tokens.clone(),
            viewer_tokens: config.viewer_tokens.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            max_body_bytes: config.max_body_bytes,
            login_throttle: throttle::LoginThrottle::default(),
            secure_cookies: tls.is_some() || base_url.starts_with("https://"),
            delta_wake: tokio::sync::Notify::new(),
            served: served::ServedBytes::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let front = front::MakeFront::new(http::router(state.clone()), Some(state.clone()));
        let http = serve::spawn(listeners, front, tls, stopped.clone()).map_err(|source| {
            StartError::Bind {
                addr: config.listen,
                error: source,
            }
        })?;
        let deltas = match (config.deltas.clone(), delta_key) {
            (Some(settings), Some(key)) => Some(tokio::spawn(deltas::run(
                state.clone(),
                settings,
                key,
                stopped.clone(),
            ))),
            _ => None,
        };
        let sync = config
            .sync
            .clone()
            .map(|settings| tokio::spawn(sync::run(state.clone(), settings, stopped.clone())));
        tokio::spawn(variants::record_missing_ops(state.clone(), stopped.clone()));
        let jobs = tokio::spawn(background_jobs(
            state.clone(),
            Schedule {
                retention: config.retention,
                sweep: config.timeout_sweep,
                flush: config.checkin_flush,
            },
            stopped,
        ));
        info!(%addr, "fastpatch-server listening");
        Ok(ServerHandle {
            addr,
            base_url,
            state,
            stop,
            http,
            jobs,
            deltas,
            sync,
        })
    }
}

struct Schedule {
    retention: Retention,
    sweep: Duration,
    flush: Duration,
}

/// Retention pruning, the safe-mode timeout sweep and the last-check flush,
/// until `stop` turns true (never in the middle of a job).
async fn background_jobs(state: Arc<AppState>, when: Schedule, mut stop: watch::Receiver<bool>) {
    let retention = when.retention;
    let mut prune = tokio::time::interval(retention.interval);
    let mut timeouts = tokio::time::interval(when.sweep);
    // The first flush is one period after start: an immediate tick would race the first
    // check-ins (nothing is pending at start anyway).
    let mut flush = tokio::time::interval_at(tokio::time::Instant::now() + when.flush, when.flush);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // (The guard `wait_for` returns must not live across an await.)
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            _ = flush.tick() => {
                state.flush_served().await;
                let now = state.clock.now().timestamp();
                if let Err(e) = state.store.flush_last_checks(now).await {
                    warn!(error = %e, "writing last-check timestamps failed; kept for the next try");
                }
                match state.store.checkpoint().await {
                    Ok(true) => {}
                    Ok(false) => debug!("WAL checkpoint did not complete (busy); next tick tries again"),
                    Err(e) => warn!(error = %e, "WAL checkpoint failed"),
                }
            }
            _ = prune.tick() => {
                let now = state.clock.now().timestamp();
                match state.store.prune(now, retention.keep_days * 86400, retention.silent_instance_days * 86400).await {
                    Ok(r) => info!(
                        "retention job: removed {} events, {} history rows, {} silent instances, {} grants, {} activity entries, {} expired sessions",
                        r.events, r.history, r.instances, r.grants, r.activity, r.sessions
                    ),
                    Err(e) => warn!(error = %e, "retention job failed"),
                }
            }
            _ = timeouts.tick() => {
                let now = state.clock.now().timestamp();
                match state.store.sweep_timeouts(now).await {
                    Ok(halted) => for (app, group) in halted {
                        state.metrics.inc(&state.metrics.halts);
                        warn!(%app, %group, "safe mode halted the group: an update timed out");
                    },
                    Err(e) => warn!(error = %e, "timeout sweep failed"),
                }
            }
        }
    }
}

impl AppState {
    /// Adds the payload bytes sent since the last call to the store's counters
    /// (kept for the next call when the store fails).
    pub async fn flush_served(&self) {
        let taken = self.served.take();
        if let Err(e) = self.store.add_served_bytes(&taken).await {
            warn!(error = %e, "writing bytes-served counters failed; kept for the next try");
            self.served.put_back(taken);
        }
    }
}

/// One HTTP serving thread per core (nginx's `worker_processes auto`).
pub fn default_http_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
