//! Storage on SQLite (default, a file under the data dir) or PostgreSQL, via
//! sqlx's `Any` driver so one set of queries serves both. Queries use `$n`
//! placeholders, which both engines accept; all integers are BIGINT.

mod activity;
mod config;
pub mod dashboard;
mod deltas;
mod grants;
mod groups;
mod instances;
mod packages;
mod recent;
mod retention;
mod sessions;
mod sync;
mod variants;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor, Transaction};

pub use activity::{Activity, ActivityKind, ActivityRow};
pub use config::{normalize_arch, App, AppConfig, Channel, DEFAULT_ARCH};
pub use deltas::{DeltaJob, DeltaRow, DeltaState};
pub use grants::{GrantOutcome, GrantRequest, IN_FLIGHT_QUERIES};
pub use groups::{hhmm, policy_change, Group, DAYS};
pub use instances::{CheckIn, EventRow, HistoryRow, InstanceFilter, InstanceRow};
pub use packages::{
    check_file_name, digest_b64, ExternalPackage, ExtraFile, PackageFile, PackageRow,
};
pub use recent::INSTANCE_TTL_SECS;
pub use retention::PruneReport;
pub use sync::{SyncRow, SyncState};
pub use variants::VariantRow;

/// Which engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("unsupported database URL {0:?} (want sqlite:// or postgres://)")]
    UnsupportedUrl(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    cache: std::sync::Arc<config::ConfigCache>,
    recent: std::sync::Arc<recent::RecentCheckIns>,
}

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_init.sql")),
    (2, include_str!("../../migrations/0002_package_files.sql")),
    (3, include_str!("../../migrations/0003_dashboard.sql")),
    (4, include_str!("../../migrations/0004_sessions.sql")),
    (5, include_str!("../../migrations/0005_deltas.sql")),
    (6, include_str!("../../migrations/0006_payload_ops.sql")),
    (7, include_str!("../../migrations/0007_upstream_sync.sql")),
    (8, include_str!("../../migrations/0008_in_flight_index.sql")),
];

impl Store {
    /// The SQLite file `fastpatch.db` under `data_dir` (created if missing).
    pub async fn open_data_dir(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Invalid(format!("creating {}: {e}", data_dir.display())))?;
        let url = format!(
            "sqlite://{}?mode=rwc",
            data_dir.join("fastpatch.db").display()
        );
        Self::open(&url).await
    }

    /// Connects to `sqlite://…` or `postgres://…` and applies migrations.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let opts = AnyConnectOptions::from_str(url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 30000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        let store = Store {
            pool,
            backend,
            cache: Default::default(),
            recent: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A transaction that writes: every one the store opens. SQLite: `BEGIN IMMEDIATE`,
    /// which takes the write lock at the start and, while another connection writes,
    /// waits for it in the busy handler. A deferred transaction that reads first and then
    /// writes cannot wait: if another connection committed in between, SQLite fails it at
    /// once with "database is locked" (SQLITE_BUSY / BUSY_SNAPSHOT); the soak's admin
    /// writes got that under load. PostgreSQL: a plain `BEGIN`.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Closes the pool. Call [`Store::flush_last_checks`] first to keep
    /// the last-check timestamps still in memory (the server does).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Forgets every instance row kept in memory (their next check-ins read
    /// the database). For code that changes instances behind the store's back.
    pub fn invalidate_instances(&self) {
        self.recent.clear();
    }

    /// How many instance rows are kept in memory (a metric).
    pub fn recent_instances(&self) -> usize {
        self.recent.cached_rows()
    }

    /// Applies pending migrations in one transaction each. Concurrent starts
    /// on PostgreSQL are serialised with an advisory lock.
    async fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_lock(727100)").await?;
        }
        let result = async {
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .await?;
            for (version, sql) in MIGRATIONS {
                let done: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                        .bind(*version)
                        .fetch_optional(&mut *conn)
                        .await?;
                if done.is_some() {
                    continue;
                }
                let id = match self.backend {
                    Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
                    Backend::Postgres => "BIGSERIAL PRIMARY KEY",
                };
                let sql = sql.replace("{ID}", id);
                conn.execute("BEGIN").await?;
                for stmt in split_statements(&sql) {
                    conn.execute(sqlx::AssertSqlSafe(stmt)).await?;
                }
                sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                    .bind(*version)
                    .bind(chrono::Utc::now().timestamp())
                    .execute(&mut *conn)
                    .await?;
                conn.execute("COMMIT").await?;
            }
            Ok::<(), StoreError>(())
        }
        .await;
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_unlock(727100)").await?;
        }
        result
    }
}

/// Splits a migration into statements (on `;` at line end), dropping comments.
fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in sql.lines() {
        let line = line.split("--").next().unwrap_or("").trim_end();
        if line.trim().is_empty() {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if line.ends_with(';') {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

pub(crate) fn b(v: bool) -> i64 {
    i64::from(v)
}
