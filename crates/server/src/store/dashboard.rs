//! The dashboard's queries, and the chart sampler's writes to `dashboard_samples`
//! (the dashboard module itself has no SQL). Each read is served by an index:
//! counts by `instances_group_status (app_id, group_name, status, version)`
//! (an index-only scan on PostgreSQL), chart samples by the primary key of
//! `dashboard_samples`, instance pages by the store's keyset query.
//!
//! Why a rollup and not queries over `instance_history`: a status-over-time
//! chart needs each machine's state at each instant, which from transition
//! rows means replaying every machine's history (millions of rows at a
//! million machines); versions are not in the history at all unless a status
//! changed. One grouped count per minute over the instances index is cheap
//! and bounded, and a 30-day chart then reads 120 buckets by primary key.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Result, Store};

/// Resolutions kept: (seconds per bucket, how long buckets are kept).
pub const TIERS: [(i64, i64); 4] = [
    (60, 3 * 3600),
    (900, 3 * 86400),
    (3600, 8 * 86400),
    (21600, 35 * 86400),
];

/// Instances of one (app, group) in one (status, version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountRow {
    pub app_id: String,
    pub group_name: String,
    pub status: String,
    pub version: String,
    pub n: i64,
}

/// Counts of a group by status and by version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub total: i64,
    pub by_status: BTreeMap<String, i64>,
    pub by_version: BTreeMap<String, i64>,
}

impl Tally {
    pub fn add(&mut self, r: &CountRow) {
        self.total += r.n;
        *self.by_status.entry(r.status.clone()).or_default() += r.n;
        *self.by_version.entry(r.version.clone()).or_default() += r.n;
    }
    /// One stored sample row: a status count (`dim` "s", which also adds to the total) or
    /// a version count. Keys that dropped to 0 are left out.
    fn add_sample(&mut self, dim: &str, key: String, n: i64) {
        if n == 0 {
            return;
        }
        if dim == "s" {
            self.total += n;
            self.by_status.insert(key, n);
        } else {
            self.by_version.insert(key, n);
        }
    }
    pub fn status(&self, s: &str) -> i64 {
        self.by_status.get(s).copied().unwrap_or(0)
    }
    pub fn version(&self, v: &str) -> i64 {
        self.by_version.get(v).copied().unwrap_or(0)
    }
}

/// Tallies per (app, group).
pub fn tally(rows: &[CountRow]) -> BTreeMap<(String, String), Tally> {
    let mut out: BTreeMap<(String, String), Tally> = BTreeMap::new();
    for r in rows {
        out.entry((r.app_id.clone(), r.group_name.clone()))
            .or_default()
            .add(r);
    }
    out
}

fn count_rows(rows: Vec<sqlx::any::AnyRow>) -> Result<Vec<CountRow>> {
    rows.iter()
        .map(|r| {
            Ok(CountRow {
                app_id: r.try_get("app_id")?,
                group_name: r.try_get("group_name")?,
                status: r.try_get("status")?,
                version: r.try_get("version")?,
                n: r.try_get("n")?,
            })
        })
        .collect()
}

/// Every group's counts in one scan (overview, sampler).
pub async fn counts_all(store: &Store) -> Result<Vec<CountRow>> {
    let rows = sqlx::query(
        "SELECT app_id, group_name, status, version, COUNT(*) AS n FROM instances \
         GROUP BY app_id, group_name, status, version",
    )
    .fetch_all(store.pool())
    .await?;
    count_rows(rows)
}

/// Every group's counts from the newest 1-minute sample, if it is at most
/// `max_age` seconds old: (bucket start, tallies). Reads one bucket by index.
pub async fn latest_sample(
    store: &Store,
    now: i64,
    max_age: i64,
) -> Result<Option<(i64, BTreeMap<(String, String), Tally>)>> {
    let bucket: Option<i64> =
        sqlx::query_scalar("SELECT MAX(bucket) FROM dashboard_samples WHERE res = 60")
            .fetch_one(store.pool())
            .await?;
    let Some(bucket) = bucket.filter(|b| now - b <= max_age) else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT app_id, group_name, dim, key, n FROM dashboard_samples WHERE res = 60 AND bucket = $1",
    )
    .bind(bucket)
    .fetch_all(store.pool())
    .await?;
    let mut out: BTreeMap<(String, String), Tally> = BTreeMap::new();
    for r in &rows {
        let (dim, key, n): (String, String, i64) =
            (r.try_get("dim")?, r.try_get("key")?, r.try_get("n")?);
        out.entry((r.try_get("app_id")?, r.try_get("group_name")?))
            .or_default()
            .add_sample(&dim, key, n);
    }
    Ok(Some((bucket, out)))
}

/// Groups this large (by the newest sample) are shown from the sampler's counts on
/// their page: a live count grows with the group (about 120 ms at 600k machines on
/// PostgreSQL, seconds at millions), one sample bucket does not.
pub const LIVE_COUNT_MAX: i64 = 50_000;

/// One group's counts for its page, and the sample's bucket start when they come from
/// the newest sample (a group over [`LIVE_COUNT_MAX`] machines with a sample at most
/// `max_age` seconds old) rather than a live count.
pub async fn group_tally(
    store: &Store,
    app: &str,
    group: &str,
    now: i64,
    max_age: i64,
) -> Result<(Tally, Option<i64>)> {
    if let Some((bucket, t)) = latest_group_sample(store, app, group, now, max_age).await? {
        if t.total > LIVE_COUNT_MAX {
            return Ok((t, Some(bucket)));
        }
    }
    Ok((counts_group(store, app, group).await?, None))
}

/// One group's counts from the newest 1-minute sample, if it is at most `max_age`
/// seconds old (two primary-key lookups).
async fn latest_group_sample(
    store: &Store,
    app: &str,
    group: &str,
    now: i64,
    max_age: i64,
) -> Result<Option<(i64, Tally)>> {
    let bucket: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(bucket) FROM dashboard_samples WHERE app_id = $1 AND group_name = $2 AND res = 60",
    )
    .bind(app.to_owned())
    .bind(group.to_owned())
    .fetch_one(store.pool())
    .await?;
    let Some(bucket) = bucket.filter(|b| now - b <= max_age) else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT dim, key, n FROM dashboard_samples \
         WHERE app_id = $1 AND group_name = $2 AND res = 60 AND bucket = $3",
    )
    .bind(app.to_owned())
    .bind(group.to_owned())
    .bind(bucket)
    .fetch_all(store.pool())
    .await?;
    let mut t = Tally::default();
    for r in &rows {
        let (dim, key, n): (String, String, i64) =
            (r.try_get("dim")?, r.try_get("key")?, r.try_get("n")?);
        t.add_sample(&dim, key, n);
    }
    Ok(Some((bucket, t)))
}

/// One group's counts (group page).
pub async fn counts_group(store: &Store, app: &str, group: &str) -> Result<Tally> {
    let rows = sqlx::query(
        "SELECT app_id, group_name, status, version, COUNT(*) AS n FROM instances \
         WHERE app_id = $1 AND group_name = $2 GROUP BY app_id, group_name, status, version",
    )
    .bind(app.to_owned())
    .bind(group.to_owned())
    .fetch_all(store.pool())
    .await?;
    let mut t = Tally::default();
    for r in count_rows(rows)? {
        t.add(&r);
    }
    Ok(t)
}

/// One stored sample: at `bucket`, `n` instances had `key` (a status or a version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub bucket: i64,
    pub dim: String,
    pub key: String,
    pub n: i64,
}

/// Samples of one group at resolution `res` since `since` (primary-key range scan).
pub async fn samples(
    store: &Store,
    app: &str,
    group: &str,
    res: i64,
    since: i64,
) -> Result<Vec<Sample>> {
    let rows = sqlx::query(
        "SELECT bucket, dim, key, n FROM dashboard_samples \
         WHERE app_id = $1 AND group_name = $2 AND res = $3 AND bucket >= $4 ORDER BY bucket",
    )
    .bind(app.to_owned())
    .bind(group.to_owned())
    .bind(res)
    .bind(since)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Sample {
                bucket: r.try_get("bucket")?,
                dim: r.try_get("dim")?,
                key: r.try_get("key")?,
                n: r.try_get("n")?,
            })
        })
        .collect()
}

/// Checks that `dashboard_samples` is there (migration 3, applied when the store opens with
/// every other migration), so a sampler on a database that is not migrated fails clearly.
pub async fn ensure_schema(store: &Store) -> Result<()> {
    sqlx::query("SELECT COUNT(*) FROM dashboard_samples WHERE 1 = 0")
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Takes one sample of every group at `now` into each tier, and prunes old buckets.
pub async fn sample(store: &Store, now: i64) -> Result<usize> {
    let rows = counts_all(store).await?;
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
    let mut tx = store.begin_write().await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(g: &str, s: &str, v: &str, n: i64) -> CountRow {
        CountRow {
            app_id: "a".into(),
            group_name: g.into(),
            status: s.into(),
            version: v.into(),
            n,
        }
    }

    #[test]
    fn tallies_per_group() {
        let t = tally(&[
            row("beta", "complete", "2.0", 3),
            row("beta", "undefined", "1.0", 5),
            row("beta", "complete", "1.0", 1),
            row("stable", "error", "1.0", 2),
        ]);
        let beta = &t[&("a".to_owned(), "beta".to_owned())];
        assert_eq!(beta.total, 9);
        assert_eq!(beta.status("complete"), 4);
        assert_eq!(beta.version("1.0"), 6);
        assert_eq!(beta.status("error"), 0);
        assert_eq!(t[&("a".to_owned(), "stable".to_owned())].status("error"), 2);
    }

    #[test]
    fn points_sum_statuses_and_versions() {
        let row = |s: &str, v: &str, n| row("g", s, v, n);
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
