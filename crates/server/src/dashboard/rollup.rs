//! Chart history: a sampler writes every group's counts by status and by
//! version into `dashboard_samples` once a minute, at four resolutions.
//!
//! Why a rollup and not queries over `instance_history`: a status-over-time
//! chart needs each machine's state at each instant, which from transition
//! rows means replaying every machine's history (millions of rows at a
//! million machines); versions are not in the history at all unless a status
//! changed. One grouped count per minute over the instances index is cheap
//! and bounded, and a 30-day chart then reads 120 buckets by primary key.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{debug, warn};

use super::queries::{self, CountRow};
use super::Dash;
use crate::store::{Result, Store};
use crate::AppState;

/// Resolutions kept: (seconds per bucket, how long buckets are kept).
pub const TIERS: [(i64, i64); 4] = [
    (60, 3 * 3600),
    (900, 3 * 86400),
    (3600, 8 * 86400),
    (21600, 35 * 86400),
];

/// How often the sampler runs.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// The chart ranges the group page offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Hour,
    Day,
    Week,
    Month,
}

impl Range {
    pub const ALL: [Range; 4] = [Range::Hour, Range::Day, Range::Week, Range::Month];

    pub fn parse(s: &str) -> Option<Range> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Range::Hour => "1h",
            Range::Day => "1d",
            Range::Week => "7d",
            Range::Month => "30d",
        }
    }
    pub fn span_secs(self) -> i64 {
        match self {
            Range::Hour => 3600,
            Range::Day => 86400,
            Range::Week => 7 * 86400,
            Range::Month => 30 * 86400,
        }
    }
    /// The tier a chart of this range reads: 60, 96, 168 and 120 points at most.
    pub fn res(self) -> i64 {
        match self {
            Range::Hour => 60,
            Range::Day => 900,
            Range::Week => 3600,
            Range::Month => 21600,
        }
    }
}

/// Checks that `dashboard_samples` is there (migration 3, applied when the store opens with
/// every other migration), so a sampler on a database that is not migrated fails clearly.
pub async fn ensure_schema(store: &Store) -> Result<()> {
    sqlx::query("SELECT COUNT(*) FROM dashboard_samples WHERE 1 = 0")
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Takes one sample of every group at `now` and prunes old buckets.
pub async fn sample(store: &Store, now: i64) -> Result<usize> {
    let rows = queries::counts_all(store).await?;
    write_sample(store, now, &rows).await
}

/// Per (app, group): (dim, key) → count.
type Points = BTreeMap<(String, String), BTreeMap<(&'static str, String), i64>>;

fn points(rows: &[CountRow]) -> Points {
    let mut out: Points = BTreeMap::new();
    for r in rows {
        let g = out
            .entry((r.app_id.clone(), r.group_name.clone()))
            .or_default();
        *g.entry(("s", r.status.clone())).or_default() += r.n;
        *g.entry(("v", r.version.clone())).or_default() += r.n;
    }
    out
}

async fn write_sample(store: &Store, now: i64, rows: &[CountRow]) -> Result<usize> {
    let points = points(rows);
    let mut written = 0;
    let mut tx = store.pool().begin().await?;
    for (res, keep) in TIERS {
        let bucket = now - now.rem_euclid(res);
        // Keys that vanished since an earlier sample in this bucket drop to 0.
        sqlx::query("UPDATE dashboard_samples SET n = 0 WHERE res = $1 AND bucket = $2")
            .bind(res)
            .bind(bucket)
            .execute(&mut *tx)
            .await?;
        for ((app, group), keys) in &points {
            for ((dim, key), n) in keys {
                sqlx::query(
                    "INSERT INTO dashboard_samples (app_id, group_name, res, bucket, dim, key, n) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (app_id, group_name, res, bucket, dim, key) DO UPDATE SET n = excluded.n",
                )
                .bind(app.clone())
                .bind(group.clone())
                .bind(res)
                .bind(bucket)
                .bind((*dim).to_owned())
                .bind(key.clone())
                .bind(*n)
                .execute(&mut *tx)
                .await?;
                written += 1;
            }
        }
        sqlx::query("DELETE FROM dashboard_samples WHERE res = $1 AND bucket < $2")
            .bind(res)
            .bind(now - keep)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(written)
}

/// Runs the sampler every [`SAMPLE_EVERY`] while the server lives (it holds
/// only a weak reference and stops once the state is gone or the pool closed).
pub fn spawn_sampler(state: &Arc<AppState>, dash: Arc<Dash>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<AppState> = Arc::downgrade(state);
    rt.spawn(async move {
        let start = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut tick = tokio::time::interval_at(start, SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { break };
            if state.store.pool().is_closed() {
                break;
            }
            if let Err(e) = dash.ensure_schema(&state).await {
                warn!(error = %e, "dashboard: creating the samples table failed");
                continue;
            }
            let now = state.clock.now().timestamp();
            let started = std::time::Instant::now();
            match sample(&state.store, now).await {
                Ok(n) => debug!(
                    rows = n,
                    ms = started.elapsed().as_millis() as u64,
                    "dashboard sample taken"
                ),
                Err(e) if state.store.pool().is_closed() => {
                    debug!(error = %e, "dashboard sampler stops: database closed");
                    break;
                }
                Err(e) => warn!(error = %e, "dashboard sample failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip_and_fit_their_tiers() {
        for r in Range::ALL {
            assert_eq!(Range::parse(r.as_str()), Some(r));
            let points = r.span_secs() / r.res();
            assert!((60..=720).contains(&points), "{r:?}: {points}");
            let keep = TIERS.iter().find(|t| t.0 == r.res()).map(|t| t.1);
            assert!(keep.is_some_and(|k| k >= r.span_secs()), "{r:?}");
        }
        assert_eq!(Range::parse("2h"), None);
    }

    #[test]
    fn points_sum_statuses_and_versions() {
        let row = |s: &str, v: &str, n| CountRow {
            app_id: "a".into(),
            group_name: "g".into(),
            status: s.into(),
            version: v.into(),
            n,
        };
        let p = points(&[
            row("complete", "2", 3),
            row("undefined", "1", 4),
            row("complete", "1", 1),
        ]);
        let g = &p[&("a".to_owned(), "g".to_owned())];
        assert_eq!(g[&("s", "complete".to_owned())], 4);
        assert_eq!(g[&("v", "1".to_owned())], 5);
        assert_eq!(g.len(), 4);
    }
}
