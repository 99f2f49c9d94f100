//! Instances, their status history and events; grants under a row lock; retention.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::config::{group_from_row, Group, GROUP_COLS};
use super::{Result, Store};
use crate::policy::{self, Decision, GroupCounts, InstanceStatus, InstanceView};

/// What a check-in says about a machine.
#[derive(Debug, Clone)]
pub struct CheckIn {
    pub app_id: String,
    pub machine_id: String,
    pub alias: Option<String>,
    pub ip: Option<String>,
    pub version: String,
    pub arch: String,
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRow {
    pub app_id: String,
    pub machine_id: String,
    pub alias: Option<String>,
    pub ip: Option<String>,
    pub version: String,
    pub arch: String,
    pub group_name: String,
    pub status: String,
    pub target_version: Option<String>,
    pub granted_at: Option<i64>,
    pub status_at: i64,
    pub last_check_at: i64,
    pub created_at: i64,
    pub last_error_code: Option<i64>,
}

impl InstanceRow {
    pub fn view(&self) -> InstanceView {
        InstanceView {
            status: InstanceStatus::parse(&self.status).unwrap_or(InstanceStatus::Undefined),
            target_version: self.target_version.clone(),
            granted_at: self.granted_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub status: String,
    pub version: String,
    pub target_version: Option<String>,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    pub event_type: i64,
    pub event_result: i64,
    pub error_code: Option<i64>,
    pub previous_version: Option<String>,
    pub version: String,
    pub at: i64,
}

/// Filter and keyset cursor for instance lists (ordered by machine id).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceFilter {
    pub app_id: Option<String>,
    pub group: Option<String>,
    pub status: Option<String>,
    pub version: Option<String>,
    /// Only machines whose last check is older than this many seconds.
    pub silent_for_secs: Option<i64>,
    /// Exact machine id, alias or IP.
    pub search: Option<String>,
    /// Return machines with id > `after`.
    pub after: Option<String>,
    pub limit: Option<i64>,
}

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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub events: u64,
    pub history: u64,
    pub instances: u64,
    pub grants: u64,
    pub activity: u64,
}

/// How stale `last_check_at` may be (seconds) before a check-in rewrites it.
pub const LAST_CHECK_RESOLUTION_SECS: i64 = 60;

const INSTANCE_COLS: &str = "app_id, machine_id, alias, ip, version, arch, group_name, status, target_version, granted_at, status_at, last_check_at, created_at, last_error_code";

fn instance_from_row(r: &AnyRow) -> Result<InstanceRow> {
    Ok(InstanceRow {
        app_id: r.try_get("app_id")?,
        machine_id: r.try_get("machine_id")?,
        alias: r.try_get("alias")?,
        ip: r.try_get("ip")?,
        version: r.try_get("version")?,
        arch: r.try_get("arch")?,
        group_name: r.try_get("group_name")?,
        status: r.try_get("status")?,
        target_version: r.try_get("target_version")?,
        granted_at: r.try_get("granted_at")?,
        status_at: r.try_get("status_at")?,
        last_check_at: r.try_get("last_check_at")?,
        created_at: r.try_get("created_at")?,
        last_error_code: r.try_get("last_error_code")?,
    })
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
    /// Records a check-in; returns the instance as it was before (None if new).
    pub async fn check_in(&self, c: &CheckIn, now: i64) -> Result<Option<InstanceRow>> {
        // A machine re-checking with nothing new costs a read, not a write:
        // last_check_at is refreshed at most once per LAST_CHECK_RESOLUTION_SECS.
        if let Some(inst) = self.instance(&c.app_id, &c.machine_id).await? {
            let unchanged = inst.alias == c.alias
                && inst.ip == c.ip
                && inst.version == c.version
                && inst.arch == c.arch
                && inst.group_name == c.group
                && (0..LAST_CHECK_RESOLUTION_SECS).contains(&(now - inst.last_check_at));
            if unchanged {
                return Ok(Some(inst));
            }
        }
        // One statement: the upsert leaves status/target/grant untouched, so
        // RETURNING gives the state before this check; created_at tells new rows.
        let sql = format!(
            "INSERT INTO instances (app_id, machine_id, alias, ip, version, arch, group_name, status, status_at, last_check_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'undefined', $8, $8, $8) \
             ON CONFLICT (app_id, machine_id) DO UPDATE SET alias = excluded.alias, ip = excluded.ip, version = excluded.version, arch = excluded.arch, group_name = excluded.group_name, last_check_at = excluded.last_check_at \
             RETURNING {INSTANCE_COLS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(c.app_id.clone())
            .bind(c.machine_id.clone())
            .bind(c.alias.clone())
            .bind(c.ip.clone())
            .bind(c.version.clone())
            .bind(c.arch.clone())
            .bind(c.group.clone())
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        let inst = instance_from_row(&row)?;
        if inst.created_at == now && inst.status == "undefined" && inst.status_at == now {
            let exists: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM instance_history WHERE app_id = $1 AND machine_id = $2",
            )
            .bind(c.app_id.clone())
            .bind(c.machine_id.clone())
            .fetch_one(&self.pool)
            .await?;
            if exists == 0 {
                self.insert_history(
                    &c.app_id,
                    &c.machine_id,
                    &c.group,
                    "undefined",
                    &c.version,
                    None,
                    now,
                )
                .await?;
                return Ok(None);
            }
        }
        Ok(Some(inst))
    }

    pub async fn instance(&self, app: &str, machine: &str) -> Result<Option<InstanceRow>> {
        let sql =
            format!("SELECT {INSTANCE_COLS} FROM instances WHERE app_id = $1 AND machine_id = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app.to_owned())
            .bind(machine.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_history(
        &self,
        app: &str,
        machine: &str,
        group: &str,
        status: &str,
        version: &str,
        target: Option<&str>,
        now: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO instance_history (app_id, machine_id, group_name, status, version, target_version, at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(app.to_owned())
            .bind(machine.to_owned())
            .bind(group.to_owned())
            .bind(status.to_owned())
            .bind(version.to_owned())
            .bind(target.map(str::to_owned))
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Moves an instance to `status` (history only on change). `error_code` is kept for errors.
    pub async fn set_status(
        &self,
        inst: &InstanceRow,
        status: InstanceStatus,
        error_code: Option<i64>,
        now: i64,
    ) -> Result<()> {
        if inst.status == status.as_str() && error_code.is_none() {
            return Ok(());
        }
        sqlx::query("UPDATE instances SET status = $1, status_at = $2, last_error_code = COALESCE($3, last_error_code) WHERE app_id = $4 AND machine_id = $5")
            .bind(status.as_str().to_owned())
            .bind(now)
            .bind(error_code)
            .bind(inst.app_id.clone())
            .bind(inst.machine_id.clone())
            .execute(&self.pool)
            .await?;
        if inst.status != status.as_str() {
            self.insert_history(
                &inst.app_id,
                &inst.machine_id,
                &inst.group_name,
                status.as_str(),
                &inst.version,
                inst.target_version.as_deref(),
                now,
            )
            .await?;
        }
        Ok(())
    }

    pub async fn record_event(
        &self,
        inst: &InstanceRow,
        ev: &fastpatch_omaha::Event,
        now: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO events (app_id, machine_id, group_name, event_type, event_result, error_code, previous_version, version, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(inst.app_id.clone())
            .bind(inst.machine_id.clone())
            .bind(inst.group_name.clone())
            .bind(i64::from(ev.event_type))
            .bind(i64::from(ev.event_result))
            .bind(ev.error_code.map(|c| i64::from(c.0)))
            .bind(ev.previous_version.clone())
            .bind(inst.version.clone())
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Decides and, when the decision is a new grant, records it — all inside
    /// one transaction that first bumps the group row. That UPDATE takes the
    /// row lock (PostgreSQL) or the write lock (SQLite), so concurrent grants
    /// for one group, from any number of server processes, are serialised and
    /// every count below sees all earlier grants.
    pub async fn grant(&self, req: &GrantRequest<'_>) -> Result<GrantOutcome> {
        let mut tx = self.pool.begin().await?;
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
        let group = group_from_row(&row)?;
        let policy = group.policy();
        let now = req.now.timestamp();
        let cutoff = now - policy.update_timeout_secs;

        if policy.safe_mode && !policy.halted {
            if let Some(stuck) = timed_out_machine(&mut tx, req.app_id, req.group, cutoff).await? {
                halt_in_tx(
                    &mut tx,
                    &group,
                    &format!("update timed out on {stuck}"),
                    now,
                )
                .await?;
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
                    insert_activity_tx(
                        &mut tx,
                        &group,
                        "rollout_started",
                        Some(&version),
                        &format!("first grant of {version} in group {}", group.name),
                        now,
                    )
                    .await?;
                }
                tx.commit().await?;
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
            let group = group_from_row(&row)?;
            let mut tx = self.pool.begin().await?;
            sqlx::query("UPDATE update_groups SET grant_seq = grant_seq + 1 WHERE app_id = $1 AND name = $2")
                .bind(group.app_id.clone())
                .bind(group.name.clone())
                .execute(&mut *tx)
                .await?;
            let cutoff = now - group.update_timeout_secs;
            if let Some(stuck) =
                timed_out_machine(&mut tx, &group.app_id, &group.name, cutoff).await?
            {
                halt_in_tx(
                    &mut tx,
                    &group,
                    &format!("update timed out on {stuck}"),
                    now,
                )
                .await?;
                halted.push((group.app_id.clone(), group.name.clone()));
                self.cache.clear();
            }
            tx.commit().await?;
        }
        Ok(halted)
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
        let res = sqlx::query("UPDATE update_groups SET halted = 1, halted_reason = $1, halted_at = $2 WHERE app_id = $3 AND name = $4 AND halted = 0")
            .bind(reason.to_owned())
            .bind(now)
            .bind(app.to_owned())
            .bind(group.to_owned())
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 1 {
            self.add_activity(
                Some(app),
                Some(group),
                "rollout_halted",
                None,
                &format!("group {group} halted: {reason}"),
                now,
            )
            .await?;
            return Ok(true);
        }
        Ok(false)
    }

    pub async fn list_instances(&self, f: &InstanceFilter, now: i64) -> Result<Vec<InstanceRow>> {
        // Only the filters given become SQL conditions, so each combination
        // gets a plan that uses its index; the keyset cursor rides the
        // primary key (app_id, machine_id) or the (app, group, ...) indexes.
        let mut conds: Vec<String> = Vec::new();
        let mut args: Vec<Arg> = Vec::new();
        let mut push = |cond: &str, arg: Arg| {
            args.push(arg);
            conds.push(cond.replace('?', &format!("${}", args.len())));
        };
        if let Some(v) = &f.app_id {
            push("app_id = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = &f.group {
            push("group_name = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = &f.status {
            push("status = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = &f.version {
            push("version = ?", Arg::Text(v.clone()));
        }
        if let Some(s) = f.silent_for_secs {
            push("last_check_at < ?", Arg::Int(now - s));
        }
        if let Some(v) = &f.search {
            push(
                "(machine_id = ? OR alias = ? OR ip = ?)",
                Arg::Text(v.clone()),
            );
        }
        if let Some(v) = &f.after {
            push("machine_id > ?", Arg::Text(v.clone()));
        }
        let mut sql = format!("SELECT {INSTANCE_COLS} FROM instances");
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        sql.push_str(&format!(
            " ORDER BY machine_id LIMIT {}",
            f.limit.unwrap_or(100).clamp(1, 1000)
        ));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in args {
            q = match a {
                Arg::Text(t) => q.bind(t),
                Arg::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(instance_from_row).collect()
    }

    pub async fn history(&self, app: &str, machine: &str, limit: i64) -> Result<Vec<HistoryRow>> {
        let rows = sqlx::query("SELECT status, version, target_version, at FROM instance_history WHERE app_id = $1 AND machine_id = $2 ORDER BY id DESC LIMIT $3")
            .bind(app.to_owned())
            .bind(machine.to_owned())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(HistoryRow {
                    status: r.try_get("status")?,
                    version: r.try_get("version")?,
                    target_version: r.try_get("target_version")?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }

    pub async fn events(&self, app: &str, machine: &str, limit: i64) -> Result<Vec<EventRow>> {
        let rows = sqlx::query("SELECT event_type, event_result, error_code, previous_version, version, at FROM events WHERE app_id = $1 AND machine_id = $2 ORDER BY id DESC LIMIT $3")
            .bind(app.to_owned())
            .bind(machine.to_owned())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(EventRow {
                    event_type: r.try_get("event_type")?,
                    event_result: r.try_get("event_result")?,
                    error_code: r.try_get("error_code")?,
                    previous_version: r.try_get("previous_version")?,
                    version: r.try_get("version")?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }

    /// (status, count) for a group — served by the (app, group, status, version) index.
    pub async fn status_counts(&self, app: &str, group: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM instances WHERE app_id = $1 AND group_name = $2 GROUP BY status ORDER BY status")
            .bind(app.to_owned())
            .bind(group.to_owned())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    /// (version, count) for a group.
    pub async fn version_counts(&self, app: &str, group: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT version, COUNT(*) AS n FROM instances WHERE app_id = $1 AND group_name = $2 GROUP BY version ORDER BY version")
            .bind(app.to_owned())
            .bind(group.to_owned())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("version")?, r.try_get("n")?)))
            .collect()
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

    /// Registers `count` synthetic instances (`{prefix}{n:08}`) in one group, for
    /// benchmarks and dashboard scale tests. Existing ids are left alone.
    pub async fn seed_instances(
        &self,
        app: &str,
        group: &str,
        prefix: &str,
        count: u64,
        version: &str,
        now: i64,
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let mut done = 0u64;
        while done < count {
            let batch = (count - done).min(500);
            let mut sql = String::from("INSERT INTO instances (app_id, machine_id, alias, ip, version, arch, group_name, status, status_at, last_check_at, created_at) VALUES ");
            for i in 0..batch {
                if i > 0 {
                    sql.push(',');
                }
                let b = (i * 2) as usize;
                sql.push_str(&format!(
                    "($1, ${}, NULL, ${}, $2, 'amd64', $3, 'undefined', $4, $4, $4)",
                    b + 5,
                    b + 6
                ));
            }
            sql.push_str(" ON CONFLICT (app_id, machine_id) DO NOTHING");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(app.to_owned())
                .bind(version.to_owned())
                .bind(group.to_owned())
                .bind(now);
            for i in 0..batch {
                let n = done + i;
                q = q.bind(format!("{prefix}{n:08}")).bind(format!(
                    "10.{}.{}.{}",
                    (n >> 16) & 255,
                    (n >> 8) & 255,
                    n & 255
                ));
            }
            q.execute(&mut *tx).await?;
            done += batch;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Deletes events, history, grants and activity older than `keep_secs`, and
    /// instances silent for longer than `silent_secs`.
    pub async fn prune(&self, now: i64, keep_secs: i64, silent_secs: i64) -> Result<PruneReport> {
        let cutoff = now - keep_secs;
        let mut report = PruneReport::default();
        for (table, slot) in [
            ("events", &mut report.events),
            ("instance_history", &mut report.history),
            ("grants", &mut report.grants),
            ("activity", &mut report.activity),
        ] {
            let sql = format!("DELETE FROM {table} WHERE at < $1");
            *slot = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(cutoff)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        report.instances = sqlx::query("DELETE FROM instances WHERE last_check_at < $1")
            .bind(now - silent_secs)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(report)
    }
}

async fn timed_out_machine(
    tx: &mut Transaction<'static, Any>,
    app: &str,
    group: &str,
    cutoff: i64,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT machine_id FROM instances WHERE app_id = $1 AND group_name = $2 AND status IN ('granted', 'downloading', 'downloaded', 'installed') AND granted_at < $3 ORDER BY granted_at LIMIT 1",
    )
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
    let in_progress: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM instances WHERE app_id = $1 AND group_name = $2 AND status IN ('granted', 'downloading', 'downloaded', 'installed') AND granted_at >= $3 AND machine_id <> $4",
    )
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
    insert_activity_tx(
        tx,
        group,
        "rollout_halted",
        None,
        &format!("group {} halted: {reason}", group.name),
        now,
    )
    .await
}

async fn insert_activity_tx(
    tx: &mut Transaction<'static, Any>,
    group: &Group,
    kind: &str,
    version: Option<&str>,
    message: &str,
    now: i64,
) -> Result<()> {
    sqlx::query("INSERT INTO activity (app_id, group_name, kind, version, message, at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(group.app_id.clone())
        .bind(group.name.clone())
        .bind(kind.to_owned())
        .bind(version.map(str::to_owned))
        .bind(message.to_owned())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

enum Arg {
    Text(String),
    Int(i64),
}
