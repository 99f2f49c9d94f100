//! The upstream syncer's progress: one row per (app, channel, arch), overwritten at each step.

use serde::{Deserialize, Serialize};

use super::{Result, Store};

/// Where the syncer is for one channel and architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// Asking the upstream server.
    Checking,
    Downloading,
    /// Checking hashes and signatures of what was downloaded.
    Verifying,
    /// Hosting or registering the verified files, moving the channel.
    Publishing,
    UpToDate,
    /// The upstream server holds the update back for now (a rollout limit there).
    Held,
    Failed,
}

impl SyncState {
    pub const ALL: [SyncState; 7] = [
        SyncState::Checking,
        SyncState::Downloading,
        SyncState::Verifying,
        SyncState::Publishing,
        SyncState::UpToDate,
        SyncState::Held,
        SyncState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Checking => "checking",
            SyncState::Downloading => "downloading",
            SyncState::Verifying => "verifying",
            SyncState::Publishing => "publishing",
            SyncState::UpToDate => "up_to_date",
            SyncState::Held => "held",
            SyncState::Failed => "failed",
        }
    }

    /// `None` for a value this version does not know (written by a newer server).
    pub fn parse(s: &str) -> Option<SyncState> {
        SyncState::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl std::fmt::Display for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str().replace('_', " "))
    }
}

/// The syncer's last word on one channel and architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct SyncRow {
    pub app_id: String,
    pub channel: String,
    pub arch: String,
    /// A [`SyncState`] name; read it with [`SyncRow::state`].
    pub state: String,
    pub version: Option<String>,
    pub done_bytes: i64,
    pub total_bytes: i64,
    pub message: String,
    pub updated_at: i64,
}

impl SyncRow {
    pub fn state(&self) -> Option<SyncState> {
        SyncState::parse(&self.state)
    }
}

impl Store {
    /// Records where the syncer is for `row`'s channel and architecture (replacing the last).
    pub async fn set_sync_status(&self, row: &SyncRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO upstream_sync (app_id, channel, arch, state, version, done_bytes, total_bytes, message, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (app_id, channel, arch) DO UPDATE SET state = excluded.state, version = excluded.version, \
             done_bytes = excluded.done_bytes, total_bytes = excluded.total_bytes, message = excluded.message, \
             updated_at = excluded.updated_at",
        )
        .bind(row.app_id.clone())
        .bind(row.channel.clone())
        .bind(row.arch.clone())
        .bind(row.state.clone())
        .bind(row.version.clone())
        .bind(row.done_bytes)
        .bind(row.total_bytes)
        .bind(row.message.clone())
        .bind(row.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every channel and architecture the syncer has worked on for `app`.
    pub async fn sync_statuses(&self, app: &str) -> Result<Vec<SyncRow>> {
        Ok(sqlx::query_as(
            "SELECT app_id, channel, arch, state, version, done_bytes, total_bytes, message, updated_at \
             FROM upstream_sync WHERE app_id = $1 ORDER BY channel, arch",
        )
        .bind(app.to_owned())
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::SyncState;

    #[test]
    fn every_state_reads_back_from_its_name() {
        for s in SyncState::ALL {
            assert_eq!(SyncState::parse(s.as_str()), Some(s));
        }
        assert_eq!(SyncState::parse("later"), None);
        assert_eq!(SyncState::UpToDate.to_string(), "up to date");
    }
}
