//! The activity feed: what operators and the server itself changed, newest first.
//!
//! [`record`] is the one place that writes an entry, on the pool or inside the
//! transaction that made the change, so a change and its entry land together.
//! The kinds are typed ([`ActivityKind`]); the row keeps the stored text so an
//! entry written by another version of the server still reads.

use serde::{Deserialize, Serialize};
use sqlx::Any;

use super::{DeltaState, Result, Store};

/// What an activity entry is about. The stored and API spelling is `as_str()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityKind {
    ChannelMoved,
    ChannelPromoted,
    GroupPolicyChanged,
    RolloutHalted,
    RolloutResumed,
    RolloutStarted,
    RolloutFinished,
    PackagePublished,
    PackageVariantPublished,
    DeltaStarted,
    DeltaReady,
    DeltaNotSmaller,
    DeltaFailed,
    DeltaRetry,
    SyncFound,
    SyncPublished,
    SyncFailed,
    FloorAdded,
    FloorRemoved,
}

impl ActivityKind {
    pub const ALL: [ActivityKind; 19] = [
        ActivityKind::ChannelMoved,
        ActivityKind::ChannelPromoted,
        ActivityKind::GroupPolicyChanged,
        ActivityKind::RolloutHalted,
        ActivityKind::RolloutResumed,
        ActivityKind::RolloutStarted,
        ActivityKind::RolloutFinished,
        ActivityKind::PackagePublished,
        ActivityKind::PackageVariantPublished,
        ActivityKind::DeltaStarted,
        ActivityKind::DeltaReady,
        ActivityKind::DeltaNotSmaller,
        ActivityKind::DeltaFailed,
        ActivityKind::DeltaRetry,
        ActivityKind::SyncFound,
        ActivityKind::SyncPublished,
        ActivityKind::SyncFailed,
        ActivityKind::FloorAdded,
        ActivityKind::FloorRemoved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActivityKind::ChannelMoved => "channel_moved",
            ActivityKind::ChannelPromoted => "channel_promoted",
            ActivityKind::GroupPolicyChanged => "group_policy_changed",
            ActivityKind::RolloutHalted => "rollout_halted",
            ActivityKind::RolloutResumed => "rollout_resumed",
            ActivityKind::RolloutStarted => "rollout_started",
            ActivityKind::RolloutFinished => "rollout_finished",
            ActivityKind::PackagePublished => "package_published",
            ActivityKind::PackageVariantPublished => "package_variant_published",
            ActivityKind::DeltaStarted => "delta_started",
            ActivityKind::DeltaReady => "delta_ready",
            ActivityKind::DeltaNotSmaller => "delta_not_smaller",
            ActivityKind::DeltaFailed => "delta_failed",
            ActivityKind::DeltaRetry => "delta_retry",
            ActivityKind::SyncFound => "sync_found",
            ActivityKind::SyncPublished => "sync_published",
            ActivityKind::SyncFailed => "sync_failed",
            ActivityKind::FloorAdded => "floor_added",
            ActivityKind::FloorRemoved => "floor_removed",
        }
    }

    /// The entry a delta's outcome writes.
    pub fn delta(state: DeltaState) -> ActivityKind {
        match state {
            DeltaState::Ready => ActivityKind::DeltaReady,
            DeltaState::NotSmaller => ActivityKind::DeltaNotSmaller,
            DeltaState::Failed => ActivityKind::DeltaFailed,
        }
    }
}

/// One entry to write.
#[derive(Debug, Clone, Copy)]
pub struct Activity<'a> {
    pub app: Option<&'a str>,
    pub group: Option<&'a str>,
    pub kind: ActivityKind,
    pub version: Option<&'a str>,
    pub message: &'a str,
    pub at: i64,
}

impl<'a> Activity<'a> {
    /// An entry about an app (no group), optionally about one version.
    pub fn app(
        app: &'a str,
        kind: ActivityKind,
        version: Option<&'a str>,
        message: &'a str,
        at: i64,
    ) -> Self {
        Activity {
            app: Some(app),
            group: None,
            kind,
            version,
            message,
            at,
        }
    }

    /// An entry about one group of an app.
    pub fn group(
        app: &'a str,
        group: &'a str,
        kind: ActivityKind,
        message: &'a str,
        at: i64,
    ) -> Self {
        Activity {
            app: Some(app),
            group: Some(group),
            kind,
            version: None,
            message,
            at,
        }
    }

    pub fn with_version(self, version: &'a str) -> Self {
        Activity {
            version: Some(version),
            ..self
        }
    }
}

/// Writes one entry with `exec`: the pool, or `&mut *tx` to land with the change.
pub(crate) async fn record<'c, E>(exec: E, a: &Activity<'_>) -> Result<()>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    sqlx::query("INSERT INTO activity (app_id, group_name, kind, version, message, at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(a.app.map(str::to_owned))
        .bind(a.group.map(str::to_owned))
        .bind(a.kind.as_str())
        .bind(a.version.map(str::to_owned))
        .bind(a.message.to_owned())
        .bind(a.at)
        .execute(exec)
        .await?;
    Ok(())
}

/// An entry as stored (`kind` is an [`ActivityKind::as_str`] spelling).
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
    /// Writes one entry on its own (a change that has no transaction of its own).
    pub async fn add_activity(&self, a: &Activity<'_>) -> Result<()> {
        record(&self.pool, a).await
    }

    /// One group's entries, newest first (its dashboard page).
    pub async fn group_activity(
        &self,
        app: &str,
        group: &str,
        limit: i64,
    ) -> Result<Vec<ActivityRow>> {
        Ok(sqlx::query_as(
            "SELECT id, app_id, group_name, kind, version, message, at FROM activity \
             WHERE app_id = $1 AND group_name = $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(app.to_owned())
        .bind(group.to_owned())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_spelled_once_and_match_serde() {
        let mut seen = std::collections::HashSet::new();
        for k in ActivityKind::ALL {
            assert!(seen.insert(k.as_str()), "{} twice", k.as_str());
            let json = serde_json::to_string(&k).expect("serialize");
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        for s in [
            DeltaState::Ready,
            DeltaState::NotSmaller,
            DeltaState::Failed,
        ] {
            assert_eq!(
                ActivityKind::delta(s).as_str(),
                format!("delta_{}", s.as_str())
            );
        }
    }
}
