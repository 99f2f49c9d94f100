//! Update groups: their policy as stored, and the operations that change it
//! (each with its activity entry in the same transaction).

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, FromRow, Row};

use super::activity::{record, Activity, ActivityKind};
use super::{b, Result, Store, StoreError};
use crate::policy::{GroupPolicy, OfficeHours};

/// Office days as the CLI, the dashboard and the activity feed spell them; bit 0 is Monday.
pub const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

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

/// The one writer of a group's settings (not its halt state or rollout start).
async fn write_group<'c, E>(exec: E, g: &Group) -> Result<()>
where
    E: sqlx::Executor<'c, Database = Any>,
{
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
    .execute(exec)
    .await?;
    Ok(())
}

impl Store {
    /// Creates or replaces a group's settings (not its halt state or rollout start),
    /// with no activity entry: for seeding. Operators' changes go through
    /// [`Store::set_group_policy`].
    pub async fn upsert_group(&self, g: &Group) -> Result<()> {
        self.cache.clear();
        g.validate()?;
        write_group(&self.pool, g).await
    }

    /// An operator's policy change, from any transport (CLI, API, dashboard): the
    /// settings and one activity entry that says what changed, in one transaction.
    /// Returns the group as stored.
    pub async fn set_group_policy(&self, g: &Group, now: i64) -> Result<Group> {
        g.validate()?;
        self.cache.clear();
        let sql = format!("SELECT {GROUP_COLS} FROM update_groups WHERE app_id = $1 AND name = $2");
        let mut tx = self.begin_write().await?;
        let before: Option<Group> = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(g.app_id.clone())
            .bind(g.name.clone())
            .fetch_optional(&mut *tx)
            .await?;
        write_group(&mut *tx, g).await?;
        let message = policy_change(before.as_ref(), g);
        let entry = Activity::group(
            &g.app_id,
            &g.name,
            ActivityKind::GroupPolicyChanged,
            &message,
            now,
        );
        record(&mut *tx, &entry).await?;
        let after: Group = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(g.app_id.clone())
            .bind(g.name.clone())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        self.cache.clear();
        Ok(after)
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
        let mut tx = self.begin_write().await?;
        let res = sqlx::query("UPDATE update_groups SET halted = $1, halted_reason = $2, halted_at = $3 WHERE app_id = $4 AND name = $5")
            .bind(b(halted))
            .bind(reason.map(str::to_owned))
            .bind(halted.then_some(now))
            .bind(app.to_owned())
            .bind(group.to_owned())
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("group {group}")));
        }
        let (kind, msg) = if halted {
            (
                ActivityKind::RolloutHalted,
                halted_message(group, reason.unwrap_or("by an operator")),
            )
        } else {
            (
                ActivityKind::RolloutResumed,
                format!("group {group} resumed"),
            )
        };
        record(&mut *tx, &Activity::group(app, group, kind, &msg, now)).await?;
        tx.commit().await?;
        self.cache.clear();
        Ok(())
    }
}

/// The activity message of a halt, by an operator or by safe mode.
pub(crate) fn halted_message(group: &str, reason: &str) -> String {
    format!("group {group} halted: {reason}")
}

/// `08:30` for minute 510 of the day.
pub fn hhmm(minute: i64) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

impl Group {
    /// `mon,tue 08:30–16:00 Europe/Berlin`: when updates may start if office hours are on.
    pub fn office_window(&self) -> String {
        let days: Vec<&str> = DAYS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.office_days & (1 << i) != 0)
            .map(|(_, d)| *d)
            .collect();
        format!(
            "{} {}–{} {}",
            days.join(","),
            hhmm(self.office_start_minute),
            hhmm(self.office_end_minute),
            self.office_tz
        )
    }
}

/// The activity message of a policy change: what changed, old → new, in words.
pub fn policy_change(before: Option<&Group>, after: &Group) -> String {
    let Some(before) = before else {
        return format!(
            "group {} created on channel {} ({} policy)",
            after.name,
            after.channel,
            if after.safe_mode {
                "safe-mode"
            } else {
                "default"
            }
        );
    };
    let onoff = |v: bool| if v { "on" } else { "off" };
    let limit = |v: Option<i64>| v.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    let secs = |v: i64| format!("{v} s");
    let fields: [(&str, String, String); 10] = [
        ("channel", before.channel.clone(), after.channel.clone()),
        (
            "updates",
            onoff(before.updates_enabled).into(),
            onoff(after.updates_enabled).into(),
        ),
        (
            "safe mode",
            onoff(before.safe_mode).into(),
            onoff(after.safe_mode).into(),
        ),
        (
            "max updates per period",
            limit(before.max_updates_per_period),
            limit(after.max_updates_per_period),
        ),
        ("period", secs(before.period_secs), secs(after.period_secs)),
        (
            "max concurrent",
            limit(before.max_concurrent),
            limit(after.max_concurrent),
        ),
        (
            "update timeout",
            secs(before.update_timeout_secs),
            secs(after.update_timeout_secs),
        ),
        (
            "office hours",
            onoff(before.office_hours).into(),
            onoff(after.office_hours).into(),
        ),
        (
            "office window",
            before.office_window(),
            after.office_window(),
        ),
        (
            "staged rollout",
            secs(before.rollout_duration_secs),
            secs(after.rollout_duration_secs),
        ),
    ];
    let changes: Vec<String> = fields
        .into_iter()
        .filter(|(_, old, new)| old != new)
        .map(|(name, old, new)| format!("{name} {old} → {new}"))
        .collect();
    if changes.is_empty() {
        format!("group {} policy saved unchanged", after.name)
    } else {
        format!("group {} policy: {}", after.name, changes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_change_says_what_changed() {
        let before = Group::new("app", "beta", "beta");
        assert_eq!(
            policy_change(None, &before),
            "group beta created on channel beta (safe-mode policy)"
        );
        assert_eq!(
            policy_change(Some(&before), &before),
            "group beta policy saved unchanged"
        );
        let mut after = before.clone();
        after.max_concurrent = Some(3);
        after.period_secs = 7200;
        after.office_hours = true;
        after.office_days = 0b0000111;
        after.office_start_minute = 8 * 60 + 30;
        after.office_end_minute = 16 * 60;
        after.office_tz = "Europe/Berlin".into();
        assert_eq!(
            policy_change(Some(&before), &after),
            "group beta policy: period 3600 s → 7200 s; max concurrent unlimited → 3; \
             office hours off → on; office window mon,tue,wed,thu,fri 09:00–17:00 UTC → \
             mon,tue,wed 08:30–16:00 Europe/Berlin"
        );
    }
}
