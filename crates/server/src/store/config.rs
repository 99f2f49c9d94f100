//! Applications, packages, channels, floors, and the cached settings the Omaha path reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::activity::{record, Activity, ActivityKind};
use super::groups::Group;
use super::packages::{PackageFile, PackageRow};
use super::{Result, Store, StoreError};

/// Packages registered without an arch are for this one.
pub const DEFAULT_ARCH: &str = "amd64";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct App {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Channel {
    pub app_id: String,
    pub name: String,
    pub version: Option<String>,
    pub updated_at: i64,
}

/// `amd64-usr` → `amd64`; empty → the default arch.
pub fn normalize_arch(board: Option<&str>) -> String {
    match board.map(str::trim) {
        None | Some("") => DEFAULT_ARCH.to_owned(),
        Some(b) => b.strip_suffix("-usr").unwrap_or(b).to_ascii_lowercase(),
    }
}

/// An application's settings as the Omaha hot path needs them.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub groups: Vec<Group>,
    pub channels: Vec<Channel>,
    pub packages: Vec<PackageRow>,
    /// Extra files by package id (only packages that have some).
    pub extra_files: HashMap<String, Vec<PackageFile>>,
    pub floors: Vec<String>,
    /// Deltas ready to serve.
    pub deltas: Vec<super::DeltaRow>,
    /// The packages' other payloads (same image, other operations).
    pub variants: Vec<super::VariantRow>,
}

/// Settings cached for a short time. Writes through this `Store` clear it at
/// once; writes by other processes (CLI, a second server) show within
/// [`CONFIG_TTL`] (plus one reload). Limits never rely on it: grants re-read
/// the group under lock. One request reloads an expired entry while the others
/// keep using the old copy, so an expiry never stalls a burst of requests.
#[derive(Debug, Default)]
pub struct ConfigCache {
    entries: std::sync::Mutex<HashMap<String, CachedConfig>>,
    /// Held by the one request that reloads.
    reloading: tokio::sync::Mutex<()>,
    /// Bumped by every clear: a reload that raced a write does not store its result.
    generation: AtomicU64,
}

/// When it was read, and the settings (None: the app does not exist).
type CachedConfig = (Instant, Option<Arc<AppConfig>>);

pub const CONFIG_TTL: Duration = Duration::from_secs(1);

impl ConfigCache {
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedConfig>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, app: &str) -> Lookup {
        match self.lock().get(app) {
            Some((at, cfg)) if at.elapsed() < CONFIG_TTL => Lookup::Fresh(cfg.clone()),
            Some((_, cfg)) => Lookup::Stale(cfg.clone()),
            None => Lookup::Missing,
        }
    }
}

enum Lookup {
    Fresh(Option<Arc<AppConfig>>),
    Stale(Option<Arc<AppConfig>>),
    Missing,
}

impl Store {
    /// The app's groups, channels, packages and floors (None: unknown app), cached.
    pub async fn app_config(&self, app: &str) -> Result<Option<Arc<AppConfig>>> {
        let cache = &self.cache;
        let _reload = match cache.get(app) {
            Lookup::Fresh(cfg) => return Ok(cfg),
            // Someone else is reloading: the copy a second old will do.
            Lookup::Stale(stale) => match cache.reloading.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(stale),
            },
            Lookup::Missing => {
                let guard = cache.reloading.lock().await;
                if let Lookup::Fresh(cfg) = cache.get(app) {
                    return Ok(cfg);
                }
                guard
            }
        };
        let generation = cache.generation.load(Ordering::SeqCst);
        let cfg = if self.app_exists(app).await? {
            Some(Arc::new(AppConfig {
                groups: self.groups(app).await?,
                channels: self.channels(app).await?,
                packages: self.packages(app).await?,
                extra_files: self.app_package_files(app).await?,
                floors: self.floors(app).await?,
                deltas: self
                    .deltas(app)
                    .await?
                    .into_iter()
                    .filter(|d| d.state == super::DeltaState::Ready)
                    .collect(),
                variants: self.variants(app).await?,
            }))
        } else {
            None
        };
        if cache.generation.load(Ordering::SeqCst) == generation {
            cache
                .lock()
                .insert(app.to_owned(), (Instant::now(), cfg.clone()));
        }
        Ok(cfg)
    }

    pub fn invalidate_config(&self) {
        self.cache.clear();
    }

    /// On an empty database: Flatcar's app with alpha/beta/stable channels and groups.
    pub async fn ensure_defaults(&self, now: i64) -> Result<()> {
        let apps: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM apps")
            .fetch_one(&self.pool)
            .await?;
        if apps > 0 {
            return Ok(());
        }
        let app = fastpatch_omaha::FLATCAR_APP_ID;
        self.create_app(app, "Flatcar Container Linux", now).await?;
        for name in ["alpha", "beta", "stable"] {
            self.create_channel(app, name, now).await?;
            self.upsert_group(&Group::new(app, name, name)).await?;
        }
        Ok(())
    }

    pub async fn create_app(&self, id: &str, name: &str, now: i64) -> Result<()> {
        self.cache.clear();
        let id = fastpatch_omaha::normalize_appid(id);
        sqlx::query("INSERT INTO apps (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET name = excluded.name")
            .bind(id)
            .bind(name.to_owned())
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn apps(&self) -> Result<Vec<App>> {
        Ok(sqlx::query_as("SELECT id, name FROM apps ORDER BY id")
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn app_exists(&self, id: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM apps WHERE id = $1")
            .bind(fastpatch_omaha::normalize_appid(id))
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    pub async fn create_channel(&self, app: &str, name: &str, now: i64) -> Result<()> {
        self.cache.clear();
        sqlx::query("INSERT INTO channels (app_id, name, version, updated_at) VALUES ($1, $2, NULL, $3) ON CONFLICT (app_id, name) DO NOTHING")
            .bind(app.to_owned())
            .bind(name.to_owned())
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn channels(&self, app: &str) -> Result<Vec<Channel>> {
        Ok(sqlx::query_as("SELECT app_id, name, version, updated_at FROM channels WHERE app_id = $1 ORDER BY name")
            .bind(app.to_owned())
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn channel(&self, app: &str, name: &str) -> Result<Option<Channel>> {
        Ok(self
            .channels(app)
            .await?
            .into_iter()
            .find(|c| c.name == name))
    }

    /// Points a channel at `version` (which must have at least one package),
    /// restarting the staged rollout of every group following it.
    pub async fn set_channel(&self, app: &str, name: &str, version: &str, now: i64) -> Result<()> {
        self.cache.clear();
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM packages WHERE app_id = $1 AND version = $2")
                .bind(app.to_owned())
                .bind(version.to_owned())
                .fetch_one(&self.pool)
                .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "no package for version {version}"
            )));
        }
        self.create_channel(app, name, now).await?;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE channels SET version = $1, updated_at = $2 WHERE app_id = $3 AND name = $4",
        )
        .bind(version.to_owned())
        .bind(now)
        .bind(app.to_owned())
        .bind(name.to_owned())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO channel_history (app_id, channel, version, at) VALUES ($1, $2, $3, $4)",
        )
        .bind(app.to_owned())
        .bind(name.to_owned())
        .bind(version.to_owned())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE update_groups SET rollout_started_at = $1 WHERE app_id = $2 AND channel = $3",
        )
        .bind(now)
        .bind(app.to_owned())
        .bind(name.to_owned())
        .execute(&mut *tx)
        .await?;
        let message = format!("channel {name} now points at {version}");
        let entry = Activity::app(
            app,
            ActivityKind::ChannelMoved,
            Some(version),
            &message,
            now,
        );
        record(&mut *tx, &entry).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Copies `from`'s version to `to`: the same packages, so the same bytes and hashes.
    pub async fn promote(&self, app: &str, from: &str, to: &str, now: i64) -> Result<String> {
        let source = self
            .channel(app, from)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("channel {from}")))?;
        let version = source
            .version
            .ok_or_else(|| StoreError::Invalid(format!("channel {from} has no version")))?;
        self.set_channel(app, to, &version, now).await?;
        let message = format!("promoted {version} from {from} to {to}");
        self.add_activity(&Activity::app(
            app,
            ActivityKind::ChannelPromoted,
            Some(&version),
            &message,
            now,
        ))
        .await?;
        Ok(version)
    }

    pub async fn channel_history(
        &self,
        app: &str,
        name: &str,
        limit: i64,
    ) -> Result<Vec<(String, i64)>> {
        let rows: Vec<(Option<String>, i64)> = sqlx::query_as("SELECT version, at FROM channel_history WHERE app_id = $1 AND channel = $2 ORDER BY id DESC LIMIT $3")
            .bind(app.to_owned())
            .bind(name.to_owned())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(v, at)| (v.unwrap_or_default(), at))
            .collect())
    }

    pub async fn floors(&self, app: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT version FROM floors WHERE app_id = $1 ORDER BY version")
                .bind(app.to_owned())
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Adds a floor (machines below it update to it first), with an activity entry saying
    /// `why`, in one transaction. False when it was a floor already (nothing written).
    pub async fn add_floor(&self, app: &str, version: &str, why: &str, now: i64) -> Result<bool> {
        let sql = "INSERT INTO floors (app_id, version) VALUES ($1, $2) ON CONFLICT (app_id, version) DO NOTHING";
        let message =
            format!("floor {version} added ({why}): machines below it pass through it first");
        self.change_floor(app, version, sql, ActivityKind::FloorAdded, &message, now)
            .await
    }

    /// Removes a floor, with an activity entry. False when it was not a floor.
    pub async fn remove_floor(&self, app: &str, version: &str, now: i64) -> Result<bool> {
        let sql = "DELETE FROM floors WHERE app_id = $1 AND version = $2";
        let message = format!("floor {version} removed");
        self.change_floor(app, version, sql, ActivityKind::FloorRemoved, &message, now)
            .await
    }

    async fn change_floor(
        &self,
        app: &str,
        version: &str,
        sql: &'static str,
        kind: ActivityKind,
        message: &str,
        now: i64,
    ) -> Result<bool> {
        self.cache.clear();
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(sql)
            .bind(app.to_owned())
            .bind(version.to_owned())
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if changed {
            record(
                &mut *tx,
                &Activity::app(app, kind, Some(version), message, now),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(changed)
    }
}
