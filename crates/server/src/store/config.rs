//! Applications, packages, channels, groups, floors and the activity feed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use super::packages::{PackageFile, PackageRow};
use super::{b, Result, Store, StoreError};
use crate::policy::{GroupPolicy, OfficeHours};

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

/// A group as stored: track name → channel, with its policy (JSON shape of the API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub app_id: String,
    pub name: String,
    pub channel: String,
    pub updates_enabled: bool,
    pub max_updates_per_period: Option<i64>,
    pub period_secs: i64,
    pub max_concurrent: Option<i64>,
    pub update_timeout_secs: i64,
    pub office_hours: bool,
    pub office_tz: String,
    /// Bit 0 = Monday … bit 6 = Sunday.
    pub office_days: i64,
    pub office_start_minute: i64,
    pub office_end_minute: i64,
    pub safe_mode: bool,
    pub rollout_duration_secs: i64,
    pub rollout_started_at: i64,
    pub halted: bool,
    pub halted_reason: Option<String>,
    pub halted_at: Option<i64>,
}

impl Group {
    /// A new group on `channel` with the default policy (safe mode on).
    pub fn new(app_id: &str, name: &str, channel: &str) -> Group {
        let d = GroupPolicy::default();
        Group {
            app_id: app_id.into(),
            name: name.into(),
            channel: channel.into(),
            updates_enabled: d.updates_enabled,
            max_updates_per_period: None,
            period_secs: d.period_secs,
            max_concurrent: None,
            update_timeout_secs: d.update_timeout_secs,
            office_hours: false,
            office_tz: "UTC".into(),
            office_days: 0b0011111,
            office_start_minute: 9 * 60,
            office_end_minute: 17 * 60,
            safe_mode: d.safe_mode,
            rollout_duration_secs: 0,
            rollout_started_at: 0,
            halted: false,
            halted_reason: None,
            halted_at: None,
        }
    }

    /// Checks what the database cannot: time zone, ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(StoreError::Invalid(m.to_owned()));
        if self.office_tz.parse::<chrono_tz::Tz>().is_err() {
            return bad("office_tz is not an IANA time zone");
        }
        if !(0..=0x7f).contains(&self.office_days) {
            return bad("office_days is a 7-bit mask (bit 0 = Monday)");
        }
        if !(0..=1440).contains(&self.office_start_minute)
            || !(0..=1440).contains(&self.office_end_minute)
        {
            return bad("office hours are minutes in 0..=1440");
        }
        if self.period_secs <= 0 || self.update_timeout_secs <= 0 {
            return bad("period_secs and update_timeout_secs must be positive");
        }
        if self.max_concurrent.is_some_and(|m| m < 0)
            || self.max_updates_per_period.is_some_and(|m| m < 0)
            || self.rollout_duration_secs < 0
        {
            return bad("limits must not be negative");
        }
        if self.name.is_empty() || self.channel.is_empty() {
            return bad("group and channel names must not be empty");
        }
        Ok(())
    }

    pub fn policy(&self) -> GroupPolicy {
        let office_hours = self.office_hours.then(|| OfficeHours {
            tz: self.office_tz.parse().unwrap_or(chrono_tz::UTC),
            days: (self.office_days & 0x7f) as u8,
            start_minute: self.office_start_minute.clamp(0, 1440) as u32,
            end_minute: self.office_end_minute.clamp(0, 1440) as u32,
        });
        GroupPolicy {
            updates_enabled: self.updates_enabled,
            max_updates_per_period: self.max_updates_per_period.map(|m| m.max(0) as u64),
            period_secs: self.period_secs,
            max_concurrent: self.max_concurrent.map(|m| m.max(0) as u64),
            update_timeout_secs: self.update_timeout_secs,
            office_hours,
            safe_mode: self.safe_mode,
            rollout_duration_secs: self.rollout_duration_secs,
            rollout_started_at: self.rollout_started_at,
            halted: self.halted,
        }
    }
}

pub(crate) const GROUP_COLS: &str = "app_id, name, channel, updates_enabled, max_updates_per_period, period_secs, max_concurrent, update_timeout_secs, office_hours, office_tz, office_days, office_start_minute, office_end_minute, safe_mode, rollout_duration_secs, rollout_started_at, halted, halted_reason, halted_at";

/// Booleans are stored as BIGINT 0/1 (one schema for both engines).
impl<'r> FromRow<'r, AnyRow> for Group {
    fn from_row(r: &'r AnyRow) -> sqlx::Result<Group> {
        Ok(Group {
            app_id: r.try_get("app_id")?,
            name: r.try_get("name")?,
            channel: r.try_get("channel")?,
            updates_enabled: r.try_get::<i64, _>("updates_enabled")? != 0,
            max_updates_per_period: r.try_get("max_updates_per_period")?,
            period_secs: r.try_get("period_secs")?,
            max_concurrent: r.try_get("max_concurrent")?,
            update_timeout_secs: r.try_get("update_timeout_secs")?,
            office_hours: r.try_get::<i64, _>("office_hours")? != 0,
            office_tz: r.try_get("office_tz")?,
            office_days: r.try_get("office_days")?,
            office_start_minute: r.try_get("office_start_minute")?,
            office_end_minute: r.try_get("office_end_minute")?,
            safe_mode: r.try_get::<i64, _>("safe_mode")? != 0,
            rollout_duration_secs: r.try_get("rollout_duration_secs")?,
            rollout_started_at: r.try_get("rollout_started_at")?,
            halted: r.try_get::<i64, _>("halted")? != 0,
            halted_reason: r.try_get("halted_reason")?,
            halted_at: r.try_get("halted_at")?,
        })
    }
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ActivityRow {
    pub id: i64,
    pub app_id: Option<String>,
    pub group_name: Option<String>,
    pub kind: String,
    pub version: Option<String>,
    pub message: String,
    pub at: i64,
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
        let mut tx = self.pool.begin().await?;
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
        tx.commit().await?;
        self.add_activity(
            Some(app),
            None,
            "channel_moved",
            Some(version),
            &format!("channel {name} now points at {version}"),
            now,
        )
        .await?;
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
        self.add_activity(
            Some(app),
            None,
            "channel_promoted",
            Some(&version),
            &format!("promoted {version} from {from} to {to}"),
            now,
        )
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

    /// Creates or replaces a group's settings (not its halt state or rollout start).
    pub async fn upsert_group(&self, g: &Group) -> Result<()> {
        self.cache.clear();
        g.validate()?;
        sqlx::query(
            "INSERT INTO update_groups (app_id, name, channel, updates_enabled, max_updates_per_period, period_secs, max_concurrent, update_timeout_secs, office_hours, office_tz, office_days, office_start_minute, office_end_minute, safe_mode, rollout_duration_secs) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (app_id, name) DO UPDATE SET channel = excluded.channel, updates_enabled = excluded.updates_enabled, max_updates_per_period = excluded.max_updates_per_period, period_secs = excluded.period_secs, max_concurrent = excluded.max_concurrent, update_timeout_secs = excluded.update_timeout_secs, office_hours = excluded.office_hours, office_tz = excluded.office_tz, office_days = excluded.office_days, office_start_minute = excluded.office_start_minute, office_end_minute = excluded.office_end_minute, safe_mode = excluded.safe_mode, rollout_duration_secs = excluded.rollout_duration_secs",
        )
        .bind(g.app_id.clone())
        .bind(g.name.clone())
        .bind(g.channel.clone())
        .bind(b(g.updates_enabled))
        .bind(g.max_updates_per_period)
        .bind(g.period_secs)
        .bind(g.max_concurrent)
        .bind(g.update_timeout_secs)
        .bind(b(g.office_hours))
        .bind(g.office_tz.clone())
        .bind(g.office_days)
        .bind(g.office_start_minute)
        .bind(g.office_end_minute)
        .bind(b(g.safe_mode))
        .bind(g.rollout_duration_secs)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn groups(&self, app: &str) -> Result<Vec<Group>> {
        let sql = format!("SELECT {GROUP_COLS} FROM update_groups WHERE app_id = $1 ORDER BY name");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(app.to_owned())
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn group(&self, app: &str, name: &str) -> Result<Option<Group>> {
        let sql = format!("SELECT {GROUP_COLS} FROM update_groups WHERE app_id = $1 AND name = $2");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(app.to_owned())
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Halts (with a reason) or resumes a group; records activity either way.
    pub async fn set_halted(
        &self,
        app: &str,
        group: &str,
        halted: bool,
        reason: Option<&str>,
        now: i64,
    ) -> Result<()> {
        self.cache.clear();
        let res = sqlx::query("UPDATE update_groups SET halted = $1, halted_reason = $2, halted_at = $3 WHERE app_id = $4 AND name = $5")
            .bind(b(halted))
            .bind(reason.map(str::to_owned))
            .bind(halted.then_some(now))
            .bind(app.to_owned())
            .bind(group.to_owned())
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("group {group}")));
        }
        let (kind, msg) = if halted {
            (
                "rollout_halted",
                format!(
                    "group {group} halted: {}",
                    reason.unwrap_or("by an operator")
                ),
            )
        } else {
            ("rollout_resumed", format!("group {group} resumed"))
        };
        self.add_activity(Some(app), Some(group), kind, None, &msg, now)
            .await
    }

    pub async fn floors(&self, app: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT version FROM floors WHERE app_id = $1 ORDER BY version")
                .bind(app.to_owned())
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn set_floor(&self, app: &str, version: &str, present: bool) -> Result<()> {
        self.cache.clear();
        if present {
            sqlx::query("INSERT INTO floors (app_id, version) VALUES ($1, $2) ON CONFLICT (app_id, version) DO NOTHING")
                .bind(app.to_owned())
                .bind(version.to_owned())
                .execute(&self.pool)
                .await?;
        } else {
            sqlx::query("DELETE FROM floors WHERE app_id = $1 AND version = $2")
                .bind(app.to_owned())
                .bind(version.to_owned())
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    pub async fn add_activity(
        &self,
        app: Option<&str>,
        group: Option<&str>,
        kind: &str,
        version: Option<&str>,
        message: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO activity (app_id, group_name, kind, version, message, at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(app.map(str::to_owned))
            .bind(group.map(str::to_owned))
            .bind(kind.to_owned())
            .bind(version.map(str::to_owned))
            .bind(message.to_owned())
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Newest first; `before` is the keyset cursor (an activity id).
    pub async fn activity(&self, before: Option<i64>, limit: i64) -> Result<Vec<ActivityRow>> {
        Ok(sqlx::query_as("SELECT id, app_id, group_name, kind, version, message, at FROM activity WHERE id < $1 ORDER BY id DESC LIMIT $2")
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }
}
