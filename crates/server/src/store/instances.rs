//! Instances: check-ins (served from recent memory when nothing changed),
//! status history, events and lists.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::recent::Identity;
use super::Backend;
use super::{Result, Store};
use crate::policy::{InstanceStatus, InstanceView};

/// What a check-in says about a machine.
#[derive(Debug, Clone)]
pub struct CheckIn<'a> {
    pub app_id: &'a str,
    pub machine_id: &'a str,
    pub alias: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub version: &'a str,
    pub arch: &'a str,
    pub group: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct InstanceRow {
    pub app_id: String,
    pub machine_id: String,
    pub alias: Option<String>,
    pub ip: Option<String>,
    pub version: String,
    pub arch: String,
    pub group_name: String,
    #[sqlx(try_from = "String")]
    pub status: InstanceStatus,
    pub target_version: Option<String>,
    pub granted_at: Option<i64>,
    pub status_at: i64,
    /// May lag the truth by one flush interval (see `recent.rs`).
    pub last_check_at: i64,
    pub created_at: i64,
    pub last_error_code: Option<i64>,
}

impl InstanceRow {
    pub fn view(&self) -> InstanceView {
        InstanceView {
            status: self.status,
            target_version: self.target_version.clone(),
            granted_at: self.granted_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct HistoryRow {
    #[sqlx(try_from = "String")]
    pub status: InstanceStatus,
    pub version: String,
    pub target_version: Option<String>,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
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
    pub status: Option<InstanceStatus>,
    pub version: Option<String>,
    /// Only machines whose last check is older than this many seconds.
    pub silent_for_secs: Option<i64>,
    /// Exact machine id, alias or IP.
    pub search: Option<String>,
    /// Return machines with id > `after`.
    pub after: Option<String>,
    pub limit: Option<i64>,
}

const INSTANCE_COLS: &str = "app_id, machine_id, alias, ip, version, arch, group_name, status, target_version, granted_at, status_at, last_check_at, created_at, last_error_code";

/// Rows per statement when flushing last-check timestamps.
const FLUSH_CHUNK: usize = 500;

impl Store {
    /// Records a check-in; returns the instance as it was before (None if new).
    /// A machine re-checking with nothing new costs no database round trip:
    /// its row comes from recent memory and `last_check_at` is flushed later.
    pub async fn check_in(&self, c: &CheckIn<'_>, now: i64) -> Result<Option<Arc<InstanceRow>>> {
        let id = Identity {
            alias: c.alias,
            ip: c.ip,
            version: c.version,
            arch: c.arch,
            group: c.group,
        };
        if let Some(row) = self.recent.touch(c.app_id, c.machine_id, &id, now) {
            return Ok(Some(row));
        }
        if let Some(mut inst) = self.instance_in_db(c.app_id, c.machine_id).await? {
            if id.matches(&inst) {
                self.recent.mark_seen(c.app_id, c.machine_id, now);
                inst.last_check_at = inst.last_check_at.max(now);
                let inst = Arc::new(inst);
                self.recent.store(Arc::clone(&inst), now);
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
        let inst: InstanceRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(c.app_id.to_owned())
            .bind(c.machine_id.to_owned())
            .bind(c.alias.map(str::to_owned))
            .bind(c.ip.map(str::to_owned))
            .bind(c.version.to_owned())
            .bind(c.arch.to_owned())
            .bind(c.group.to_owned())
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        let inst = Arc::new(inst);
        self.recent.store(Arc::clone(&inst), now);
        if inst.created_at == now
            && inst.status == InstanceStatus::Undefined
            && inst.status_at == now
        {
            let exists: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM instance_history WHERE app_id = $1 AND machine_id = $2",
            )
            .bind(c.app_id.to_owned())
            .bind(c.machine_id.to_owned())
            .fetch_one(&self.pool)
            .await?;
            if exists == 0 {
                self.insert_history(
                    c.app_id,
                    c.machine_id,
                    c.group,
                    "undefined",
                    c.version,
                    None,
                    now,
                )
                .await?;
                return Ok(None);
            }
        }
        Ok(Some(inst))
    }

    /// The instance as stored, with a newer last check still in memory applied.
    pub async fn instance(&self, app: &str, machine: &str) -> Result<Option<InstanceRow>> {
        let mut row = self.instance_in_db(app, machine).await?;
        if let Some(r) = row.as_mut() {
            self.overlay_pending(r);
        }
        Ok(row)
    }

    async fn instance_in_db(&self, app: &str, machine: &str) -> Result<Option<InstanceRow>> {
        let sql =
            format!("SELECT {INSTANCE_COLS} FROM instances WHERE app_id = $1 AND machine_id = $2");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(app.to_owned())
            .bind(machine.to_owned())
            .fetch_optional(&self.pool)
            .await?)
    }

    fn overlay_pending(&self, r: &mut InstanceRow) {
        if let Some(at) = self.recent.pending_last_check(&r.app_id, &r.machine_id) {
            r.last_check_at = r.last_check_at.max(at);
        }
    }

    /// Writes the last-check timestamps held in memory (batched; only ever
    /// moves a timestamp forward). Returns how many were written. On an error
    /// the timestamps not yet written are kept for the next flush.
    ///
    /// Each batch of [`FLUSH_CHUNK`] commits on its own. One transaction over the
    /// whole flush held every row it touched (about 18,000 per flush in the soak at
    /// 4,600 req/s), and SQLite's write lock, until its last batch: an event or a
    /// grant for any of those machines waited behind it. The batches go in (app,
    /// machine) order, so each covers one range of keys; a batch that deadlocks with
    /// another process's write fails alone and is retried by the next flush.
    pub async fn flush_last_checks(&self, now: i64) -> Result<usize> {
        let mut pending = self.recent.take_pending(now);
        pending.sort_unstable();
        let mut written = 0;
        while written < pending.len() {
            let end = (written + FLUSH_CHUNK).min(pending.len());
            if let Err(e) = self.write_last_checks(&pending[written..end]).await {
                pending.drain(..written);
                self.recent.restore_pending(pending);
                return Err(e);
            }
            written = end;
        }
        Ok(written)
    }

    /// SQLite: checkpoints the write-ahead log into the database and truncates it. The
    /// automatic checkpoints are passive: under a steady stream of readers they never
    /// finish, the log grows (230 MB in 5 minutes of the soak) and every read searches
    /// it. This one waits for the readers of older snapshots (within the busy timeout)
    /// and holds writers back while it copies. Returns whether it completed.
    pub async fn checkpoint(&self) -> Result<bool> {
        if self.backend != Backend::Sqlite {
            return Ok(true);
        }
        let busy: i64 = sqlx::query_scalar("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.pool)
            .await?;
        Ok(busy == 0)
    }

    /// One batch, in one statement.
    async fn write_last_checks(&self, chunk: &[(String, String, i64)]) -> Result<()> {
        let mut sql = String::from("WITH v (app_id, machine_id, ts) AS (VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            let n = i * 3;
            sql.push_str(&format!("(${}, ${}, ${})", n + 1, n + 2, n + 3));
        }
        sql.push_str(
            ") UPDATE instances SET last_check_at = v.ts FROM v \
             WHERE instances.app_id = v.app_id AND instances.machine_id = v.machine_id \
             AND instances.last_check_at < v.ts",
        );
        // Not kept as a prepared statement: the last batch's length, and so its text,
        // differs from flush to flush, and each one would take a place in every
        // connection's statement cache.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
        for (app, machine, at) in chunk {
            q = q.bind(app.clone()).bind(machine.clone()).bind(*at);
        }
        q.execute(&self.pool).await?;
        Ok(())
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
        if inst.status == status && error_code.is_none() {
            return Ok(());
        }
        let res = sqlx::query("UPDATE instances SET status = $1, status_at = $2, last_error_code = COALESCE($3, last_error_code) WHERE app_id = $4 AND machine_id = $5")
            .bind(status.as_str().to_owned())
            .bind(now)
            .bind(error_code)
            .bind(inst.app_id.clone())
            .bind(inst.machine_id.clone())
            .execute(&self.pool)
            .await;
        if let Err(e) = res {
            self.recent.forget(&inst.app_id, &inst.machine_id);
            return Err(e.into());
        }
        self.recent.update(&inst.app_id, &inst.machine_id, |r| {
            r.status = status;
            r.status_at = now;
            if error_code.is_some() {
                r.last_error_code = error_code;
            }
        });
        if inst.status != status {
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
            push("status = ?", Arg::Text(v.as_str().to_owned()));
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
        let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
        for a in args {
            q = match a {
                Arg::Text(t) => q.bind(t),
                Arg::Int(i) => q.bind(i),
            };
        }
        let mut rows: Vec<InstanceRow> = q.fetch_all(&self.pool).await?;
        for r in &mut rows {
            self.overlay_pending(r);
        }
        Ok(rows)
    }

    pub async fn history(&self, app: &str, machine: &str, limit: i64) -> Result<Vec<HistoryRow>> {
        Ok(sqlx::query_as("SELECT status, version, target_version, at FROM instance_history WHERE app_id = $1 AND machine_id = $2 ORDER BY id DESC LIMIT $3")
            .bind(app.to_owned())
            .bind(machine.to_owned())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn events(&self, app: &str, machine: &str, limit: i64) -> Result<Vec<EventRow>> {
        Ok(sqlx::query_as("SELECT event_type, event_result, error_code, previous_version, version, at FROM events WHERE app_id = $1 AND machine_id = $2 ORDER BY id DESC LIMIT $3")
            .bind(app.to_owned())
            .bind(machine.to_owned())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// (status, count) for a group — served by the (app, group, status, version) index.
    pub async fn status_counts(&self, app: &str, group: &str) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as("SELECT status, COUNT(*) AS n FROM instances WHERE app_id = $1 AND group_name = $2 GROUP BY status ORDER BY status")
            .bind(app.to_owned())
            .bind(group.to_owned())
            .fetch_all(&self.pool)
            .await?)
    }

    /// (version, count) for a group.
    pub async fn version_counts(&self, app: &str, group: &str) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as("SELECT version, COUNT(*) AS n FROM instances WHERE app_id = $1 AND group_name = $2 GROUP BY version ORDER BY version")
            .bind(app.to_owned())
            .bind(group.to_owned())
            .fetch_all(&self.pool)
            .await?)
    }
}

enum Arg {
    Text(String),
    Int(i64),
}
