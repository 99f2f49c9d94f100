//! Retention (pruning old data) and synthetic instances for scale tests.

use serde::Serialize;

use super::{Result, Store};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub events: u64,
    pub history: u64,
    pub instances: u64,
    pub grants: u64,
    pub activity: u64,
    pub sessions: u64,
}

impl Store {
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
        let mut tx = self.begin_write().await?;
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
        // Timestamps still in memory count: write them first.
        self.flush_last_checks(now).await?;
        report.instances = sqlx::query("DELETE FROM instances WHERE last_check_at < $1")
            .bind(now - silent_secs)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if report.instances > 0 {
            self.recent.clear();
        }
        report.sessions = self.prune_sessions(now).await?;
        Ok(report)
    }
}
