//! Grants under the group's row lock, safe-mode halts and the timeout sweep.
//! Limits are only ever counted here, inside the transaction: never from a cache.

use sqlx::{Any, FromRow, Transaction};

use super::activity::{record, Activity, ActivityKind};
use super::groups::{halted_message, Group, GROUP_COLS};
use super::{Result, Store};
use crate::policy::{self, Decision, GroupCounts, InstanceView};

/// The statuses of a machine between its grant and its result, as SQL. The partial index
/// `instances_in_flight` (migration 8) has this predicate word for word: SQLite uses a
/// partial index only for a query with the same term.
macro_rules! in_flight {
    () => {
        "status IN ('granted', 'downloading', 'downloaded', 'installed')"
    };
}

/// The oldest grant still in flight that began before `$3` (safe mode's timeout).
const TIMED_OUT_SQL: &str = concat!(
    "SELECT machine_id FROM instances WHERE app_id = $1 AND group_name = $2 AND ",
    in_flight!(),
    " AND granted_at < $3 ORDER BY granted_at LIMIT 1"
);

/// Grants in flight that began at or after `$3` (the update timeout), `$4` aside.
const IN_PROGRESS_SQL: &str = concat!(
    "SELECT COUNT(*) FROM instances WHERE app_id = $1 AND group_name = $2 AND ",
    in_flight!(),
    " AND granted_at >= $3 AND machine_id <> $4"
);

/// The two queries a grant decision runs over the machines in flight (arguments: app,
/// group, a time, and for the count a machine), for a test that checks that their plans
/// read `instances_in_flight` on both databases.
#[doc(hidden)]
pub const IN_FLIGHT_QUERIES: [&str; 2] = [TIMED_OUT_SQL, IN_PROGRESS_SQL];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantOutcome {
    /// A new grant was recorded (or a live one re-offered).
    Offer {
        version: String,
        new_grant: bool,
    },
    Hold {
        version: String,
        reason: policy::HoldReason,
    },
    NoUpdate(policy::NoUpdateReason),
    /// Safe mode found a timed-out grant while granting and halted the group.
    HaltedByTimeout {
        machine_id: String,
    },
}

/// Inputs to a grant besides the counts, which are read under the lock.
pub struct GrantRequest<'a> {
    pub app_id: &'a str,
    pub group: &'a str,
    pub machine_id: &'a str,
    pub current_version: &'a str,
    pub instance: Option<&'a InstanceView>,
    pub channel_version: Option<&'a str>,
    pub floors: &'a [String],
    pub has_package: &'a (dyn Fn(&str) -> bool + Sync),
    pub now: chrono::DateTime<chrono::Utc>,
}

impl Store {
    /// Decides and, when the decision is a new grant, records it — all inside
    /// one transaction that first bumps the group row. That UPDATE takes the
    /// row lock (PostgreSQL) or the write lock (SQLite), so concurrent grants
    /// for one group, from any number of server processes, are serialised and
    /// every count below sees all earlier grants.
    pub async fn grant(&self, req: &GrantRequest<'_>) -> Result<GrantOutcome> {
        let mut tx = self.begin_write().await?;
        let sql = format!("UPDATE update_groups SET grant_seq = grant_seq + 1 WHERE app_id = $1 AND name = $2 RETURNING {GROUP_COLS}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(req.app_id.to_owned())
            .bind(req.group.to_owned())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(GrantOutcome::NoUpdate(
                policy::NoUpdateReason::NoChannelVersion,
            ));
        };
        let group = Group::from_row(&row)?;
        let policy = group.policy();
        let now = req.now.timestamp();
        let cutoff = now - policy.update_timeout_secs;

        if policy.safe_mode && !policy.halted {
            if let Some(stuck) = halt_if_timed_out(&mut tx, &group, now).await? {
                tx.commit().await?;
                return Ok(GrantOutcome::HaltedByTimeout { machine_id: stuck });
            }
        }
        let counts = counts_in_tx(&mut tx, req, &group, cutoff, now).await?;
        let has = |v: &str| (req.has_package)(v);
        let decision = policy::decide(&policy::CheckContext {
            now: req.now,
            machine_id: req.machine_id,
            current_version: req.current_version,
            instance: req.instance,
            policy: &policy,
            channel_version: req.channel_version,
            floors: req.floors,
            has_package: &has,
            counts,
        });
        match decision {
            Decision::Offer {
                version,
                new_grant: true,
            } => {
                sqlx::query("INSERT INTO grants (app_id, group_name, machine_id, version, at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(req.app_id.to_owned())
                    .bind(req.group.to_owned())
                    .bind(req.machine_id.to_owned())
                    .bind(version.clone())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE instances SET status = 'granted', target_version = $1, granted_at = $2, status_at = $2 WHERE app_id = $3 AND machine_id = $4")
                    .bind(version.clone())
                    .bind(now)
                    .bind(req.app_id.to_owned())
                    .bind(req.machine_id.to_owned())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO instance_history (app_id, machine_id, group_name, status, version, target_version, at) VALUES ($1, $2, $3, 'granted', $4, $5, $6)")
                    .bind(req.app_id.to_owned())
                    .bind(req.machine_id.to_owned())
                    .bind(req.group.to_owned())
                    .bind(req.current_version.to_owned())
                    .bind(version.clone())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                if counts.grants_in_period == 0
                    && counts.in_progress == 0
                    && !counts.target_succeeded
                {
                    let message = format!("first grant of {version} in group {}", group.name);
                    let entry = Activity::group(
                        &group.app_id,
                        &group.name,
                        ActivityKind::RolloutStarted,
                        &message,
                        now,
                    );
                    record(&mut *tx, &entry.with_version(&version)).await?;
                }
                tx.commit().await?;
                // The cached row no longer says what the database says.
                self.recent.forget(req.app_id, req.machine_id);
                Ok(GrantOutcome::Offer {
                    version,
                    new_grant: true,
                })
            }
            Decision::Offer {
                version,
                new_grant: false,
            } => {
                tx.rollback().await?;
                Ok(GrantOutcome::Offer {
                    version,
                    new_grant: false,
                })
            }
            Decision::Hold { version, reason } => {
                tx.rollback().await?;
                Ok(GrantOutcome::Hold { version, reason })
            }
            Decision::NoUpdate(r) => {
                tx.rollback().await?;
                Ok(GrantOutcome::NoUpdate(r))
            }
        }
    }

    /// Halts the group if safe mode is on and a grant has timed out (background sweep).
    pub async fn sweep_timeouts(&self, now: i64) -> Result<Vec<(String, String)>> {
        let mut halted = Vec::new();
        let sql =
            format!("SELECT {GROUP_COLS} FROM update_groups WHERE safe_mode = 1 AND halted = 0");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        for row in rows {
            let group = Group::from_row(&row)?;
            let mut tx = self.begin_write().await?;
            sqlx::query("UPDATE update_groups SET grant_seq = grant_seq + 1 WHERE app_id = $1 AND name = $2")
                .bind(group.app_id.clone())
                .bind(group.name.clone())
                .execute(&mut *tx)
                .await?;
            if halt_if_timed_out(&mut tx, &group, now).await?.is_some() {
                halted.push((group.app_id.clone(), group.name.clone()));
                self.cache.clear();
            }
            tx.commit().await?;
        }
        Ok(halted)
    }

    /// After a machine completed `version`: when no machine of the group is on
    /// another version any more, records "rollout_finished" (once per version).
    pub async fn finish_rollout_if_done(
        &self,
        app: &str,
        group: &str,
        version: &str,
        now: i64,
    ) -> Result<bool> {
        let behind: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM instances WHERE app_id = $1 AND group_name = $2 AND version <> $3 LIMIT 1",
        )
        .bind(app.to_owned())
        .bind(group.to_owned())
        .bind(version.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        if behind.is_some() {
            return Ok(false);
        }
        let mut tx = self.begin_write().await?;
        // The group row lock makes "once" hold across server processes.
        sqlx::query(
            "UPDATE update_groups SET grant_seq = grant_seq + 1 WHERE app_id = $1 AND name = $2",
        )
        .bind(app.to_owned())
        .bind(group.to_owned())
        .execute(&mut *tx)
        .await?;
        let done: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM activity WHERE app_id = $1 AND group_name = $2 AND kind = 'rollout_finished' AND version = $3 LIMIT 1",
        )
        .bind(app.to_owned())
        .bind(group.to_owned())
        .bind(version.to_owned())
        .fetch_optional(&mut *tx)
        .await?;
        if done.is_some() {
            tx.rollback().await?;
            return Ok(false);
        }
        let message = format!("every machine in group {group} runs {version}");
        let entry = Activity::group(app, group, ActivityKind::RolloutFinished, &message, now);
        record(&mut *tx, &entry.with_version(version)).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Halts a group because of a failure (safe mode); no-op if already halted.
    pub async fn halt_for_failure(
        &self,
        app: &str,
        group: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool> {
        self.cache.clear();
        let mut tx = self.begin_write().await?;
        let res = sqlx::query("UPDATE update_groups SET halted = 1, halted_reason = $1, halted_at = $2 WHERE app_id = $3 AND name = $4 AND halted = 0")
            .bind(reason.to_owned())
            .bind(now)
            .bind(app.to_owned())
            .bind(group.to_owned())
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        let message = halted_message(group, reason);
        let entry = Activity::group(app, group, ActivityKind::RolloutHalted, &message, now);
        record(&mut *tx, &entry).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn grant_count(&self, app: &str, group: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM grants WHERE app_id = $1 AND group_name = $2")
                .bind(app.to_owned())
                .bind(group.to_owned())
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

/// Safe mode's timeout rule, inside the group's locked transaction: a grant older than the
/// group's update timeout, never completed, halts the group. Returns the stuck machine.
async fn halt_if_timed_out(
    tx: &mut Transaction<'static, Any>,
    group: &Group,
    now: i64,
) -> Result<Option<String>> {
    let cutoff = now - group.update_timeout_secs;
    let Some(stuck) = timed_out_machine(tx, &group.app_id, &group.name, cutoff).await? else {
        return Ok(None);
    };
    halt_in_tx(tx, group, &format!("update timed out on {stuck}"), now).await?;
    Ok(Some(stuck))
}

async fn timed_out_machine(
    tx: &mut Transaction<'static, Any>,
    app: &str,
    group: &str,
    cutoff: i64,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(TIMED_OUT_SQL)
        .bind(app.to_owned())
        .bind(group.to_owned())
        .bind(cutoff)
        .fetch_optional(&mut **tx)
        .await?)
}

async fn counts_in_tx(
    tx: &mut Transaction<'static, Any>,
    req: &GrantRequest<'_>,
    group: &Group,
    cutoff: i64,
    now: i64,
) -> Result<GroupCounts> {
    let grants: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM grants WHERE app_id = $1 AND group_name = $2 AND at > $3",
    )
    .bind(req.app_id.to_owned())
    .bind(req.group.to_owned())
    .bind(now - group.period_secs)
    .fetch_one(&mut **tx)
    .await?;
    let in_progress: i64 = sqlx::query_scalar(IN_PROGRESS_SQL)
        .bind(req.app_id.to_owned())
        .bind(req.group.to_owned())
        .bind(cutoff)
        .bind(req.machine_id.to_owned())
        .fetch_one(&mut **tx)
        .await?;
    let target = req
        .channel_version
        .map(|c| policy::next_version(req.current_version, c, req.floors).to_owned());
    let succeeded: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT 1 AS one FROM instances WHERE app_id = $1 AND group_name = $2 AND status = 'complete' AND version = $3 LIMIT 1) AS s",
    )
    .bind(req.app_id.to_owned())
    .bind(req.group.to_owned())
    .bind(target.unwrap_or_default())
    .fetch_one(&mut **tx)
    .await?;
    Ok(GroupCounts {
        grants_in_period: grants.max(0) as u64,
        in_progress: in_progress.max(0) as u64,
        target_succeeded: succeeded > 0,
    })
}

async fn halt_in_tx(
    tx: &mut Transaction<'static, Any>,
    group: &Group,
    reason: &str,
    now: i64,
) -> Result<()> {
    sqlx::query("UPDATE update_groups SET halted = 1, halted_reason = $1, halted_at = $2 WHERE app_id = $3 AND name = $4")
        .bind(reason.to_owned())
        .bind(now)
        .bind(group.app_id.clone())
        .bind(group.name.clone())
        .execute(&mut **tx)
        .await?;
    let message = halted_message(&group.name, reason);
    let entry = Activity::group(
        &group.app_id,
        &group.name,
        ActivityKind::RolloutHalted,
        &message,
        now,
    );
    record(&mut **tx, &entry).await
}
