//! Delta payloads the server made from two hosted full payloads: which ones the
//! channels want ([`plan`], pure), their rows, and the bytes served per payload.
//!
//! A delta row is written once, when its generation ended: `ready` (hosted and
//! offered), `not_smaller` or `failed` (nothing to serve; the full payload is offered).
//! A row of any state means "do not make it again".

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::activity::{record, Activity, ActivityKind};
use super::{PackageRow, Result, Store, StoreError};

/// How a delta's generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaState {
    /// Hosted under `/v1/payloads/{id}/`, offered to machines on its source version.
    Ready,
    /// The delta came out no smaller than the full payload; the full one is served.
    NotSmaller,
    /// Generation failed (the reason is in the row's note).
    Failed,
}

impl DeltaState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeltaState::Ready => "ready",
            DeltaState::NotSmaller => "not_smaller",
            DeltaState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeltaState> {
        [
            DeltaState::Ready,
            DeltaState::NotSmaller,
            DeltaState::Failed,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }
}

/// A delta payload: builds `version` (package `package_id`) from `source_version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRow {
    pub id: String,
    pub app_id: String,
    pub package_id: String,
    /// The target package's version and arch.
    pub version: String,
    pub arch: String,
    pub source_version: String,
    pub source_package_id: String,
    pub state: DeltaState,
    pub file_name: String,
    /// 0 unless ready.
    pub size: i64,
    pub sha1_b64: String,
    pub sha256_b64: String,
    pub note: Option<String>,
    /// Bytes of this delta the server has sent (written with the last-check flush).
    pub served_bytes: i64,
    pub created_at: i64,
}

#[derive(sqlx::FromRow)]
struct RawDelta {
    id: String,
    app_id: String,
    package_id: String,
    version: String,
    arch: String,
    source_version: String,
    source_package_id: String,
    state: String,
    file_name: String,
    size: i64,
    sha1_b64: String,
    sha256_b64: String,
    note: Option<String>,
    served_bytes: i64,
    created_at: i64,
}

impl TryFrom<RawDelta> for DeltaRow {
    type Error = StoreError;
    fn try_from(r: RawDelta) -> Result<DeltaRow> {
        let state = DeltaState::parse(&r.state).ok_or_else(|| {
            StoreError::Invalid(format!("delta {} has unknown state {:?}", r.id, r.state))
        })?;
        Ok(DeltaRow {
            id: r.id,
            app_id: r.app_id,
            package_id: r.package_id,
            version: r.version,
            arch: r.arch,
            source_version: r.source_version,
            source_package_id: r.source_package_id,
            state,
            file_name: r.file_name,
            size: r.size,
            sha1_b64: r.sha1_b64,
            sha256_b64: r.sha256_b64,
            note: r.note,
            served_bytes: r.served_bytes,
            created_at: r.created_at,
        })
    }
}

const DELTA_SELECT: &str = "SELECT d.id, d.app_id, d.package_id, p.version, p.arch, d.source_version, d.source_package_id, d.state, d.file_name, d.size, d.sha1_b64, d.sha256_b64, d.note, d.served_bytes, d.created_at FROM deltas d JOIN packages p ON p.id = d.package_id";

/// A delta to make: `target`'s image described against `source`'s (both hosted, same arch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaJob {
    pub source: PackageRow,
    pub target: PackageRow,
}

/// One channel as the planner sees it: its version and the versions it pointed at
/// before, newest first (the current one may appear among them).
#[derive(Debug, Clone)]
pub struct ChannelPast {
    pub version: Option<String>,
    pub history: Vec<String>,
}

/// The deltas the channels want and nobody made yet: for every channel's version,
/// one from each of the `per_channel` distinct versions the channel pointed at
/// before it, per arch where both payloads are hosted here. Pure.
pub fn plan(
    channels: &[ChannelPast],
    packages: &[PackageRow],
    made: &HashSet<(String, String)>,
    per_channel: usize,
) -> Vec<DeltaJob> {
    fn hosted<'a>(
        packages: &'a [PackageRow],
        version: &'a str,
    ) -> impl Iterator<Item = &'a PackageRow> + 'a {
        packages
            .iter()
            .filter(move |p| p.version == version && p.base_url.is_none())
    }
    let mut jobs: Vec<DeltaJob> = Vec::new();
    for ch in channels {
        let Some(version) = ch.version.as_deref() else {
            continue;
        };
        let mut sources: Vec<&str> = Vec::new();
        for v in &ch.history {
            if sources.len() == per_channel {
                break;
            }
            if !v.is_empty() && v != version && !sources.contains(&v.as_str()) {
                sources.push(v);
            }
        }
        for target in hosted(packages, version) {
            for &s in &sources {
                let Some(source) = hosted(packages, s).find(|p| p.arch == target.arch) else {
                    continue;
                };
                let key = (target.id.clone(), s.to_owned());
                let planned = jobs
                    .iter()
                    .any(|j| j.target.id == target.id && j.source.version == s);
                if !made.contains(&key) && !planned {
                    jobs.push(DeltaJob {
                        source: source.clone(),
                        target: target.clone(),
                    });
                }
            }
        }
    }
    jobs
}

impl Store {
    /// The deltas to make now, over every application (see [`plan`]).
    pub async fn wanted_deltas(&self, per_channel: usize) -> Result<Vec<DeltaJob>> {
        let mut jobs = Vec::new();
        if per_channel == 0 {
            return Ok(jobs);
        }
        for app in self.apps().await? {
            let mut channels = Vec::new();
            for ch in self.channels(&app.id).await? {
                let history = self
                    .channel_history(&app.id, &ch.name, 64)
                    .await?
                    .into_iter()
                    .map(|(v, _)| v)
                    .collect();
                channels.push(ChannelPast {
                    version: ch.version,
                    history,
                });
            }
            let made: Vec<(String, String)> =
                sqlx::query_as("SELECT package_id, source_version FROM deltas WHERE app_id = $1")
                    .bind(app.id.clone())
                    .fetch_all(&self.pool)
                    .await?;
            let made: HashSet<_> = made.into_iter().collect();
            jobs.extend(plan(
                &channels,
                &self.packages(&app.id).await?,
                &made,
                per_channel,
            ));
        }
        Ok(jobs)
    }

    /// Records how a delta's generation ended, with its activity entry, in one
    /// transaction. A second row for the same (package, source) — another server process
    /// made it first — is not written: false.
    pub async fn add_delta(&self, d: &DeltaRow, message: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("INSERT INTO deltas (id, app_id, package_id, source_version, source_package_id, state, file_name, size, sha1_b64, sha256_b64, note, served_bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12) ON CONFLICT (package_id, source_version) DO NOTHING")
            .bind(d.id.clone())
            .bind(d.app_id.clone())
            .bind(d.package_id.clone())
            .bind(d.source_version.clone())
            .bind(d.source_package_id.clone())
            .bind(d.state.as_str())
            .bind(d.file_name.clone())
            .bind(d.size)
            .bind(d.sha1_b64.clone())
            .bind(d.sha256_b64.clone())
            .bind(d.note.clone())
            .bind(d.created_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 1 {
            let kind = ActivityKind::delta(d.state);
            let entry = Activity::app(&d.app_id, kind, Some(&d.version), message, d.created_at);
            record(&mut *tx, &entry).await?;
        }
        tx.commit().await?;
        self.cache.clear();
        Ok(n == 1)
    }

    /// Forgets a delta that was not made (`not_smaller` or `failed`), with an activity entry,
    /// so the delta worker makes it again at its next scan. A ready delta is kept.
    pub async fn retry_delta(
        &self,
        app: &str,
        version: &str,
        arch: &str,
        source_version: &str,
        now: i64,
    ) -> Result<DeltaRow> {
        let sql = format!(
            "{DELTA_SELECT} WHERE d.app_id = $1 AND p.version = $2 AND p.arch = $3 AND d.source_version = $4"
        );
        let row: Option<RawDelta> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(app.to_owned())
            .bind(version.to_owned())
            .bind(arch.to_owned())
            .bind(source_version.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row.map(DeltaRow::try_from).transpose()? else {
            return Err(StoreError::NotFound(format!(
                "delta {source_version} → {version} ({arch})"
            )));
        };
        if row.state == DeltaState::Ready {
            return Err(StoreError::Invalid(format!(
                "delta {source_version} → {version} ({arch}) is ready; there is nothing to retry"
            )));
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM deltas WHERE id = $1")
            .bind(row.id.clone())
            .execute(&mut *tx)
            .await?;
        let message = format!(
            "delta {source_version} → {version} ({arch}) will be made again (it was {})",
            row.state.as_str()
        );
        let entry = Activity::app(app, ActivityKind::DeltaRetry, Some(version), &message, now);
        record(&mut *tx, &entry).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Every delta of an application, any state, oldest first.
    pub async fn deltas(&self, app: &str) -> Result<Vec<DeltaRow>> {
        let sql = format!("{DELTA_SELECT} WHERE d.app_id = $1 ORDER BY d.created_at, d.id");
        let rows: Vec<RawDelta> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(app.to_owned())
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(DeltaRow::try_from).collect()
    }

    pub async fn delta(&self, id: &str) -> Result<Option<DeltaRow>> {
        let sql = format!("{DELTA_SELECT} WHERE d.id = $1");
        let row: Option<RawDelta> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        row.map(DeltaRow::try_from).transpose()
    }

    /// Adds bytes sent to packages' and deltas' counters (ids are unique across both).
    pub async fn add_served_bytes(&self, served: &[(String, u64)]) -> Result<()> {
        if served.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for (id, n) in served {
            let n = i64::try_from(*n).unwrap_or(i64::MAX);
            for table in ["packages", "deltas", "package_variants"] {
                let sql =
                    format!("UPDATE {table} SET served_bytes = served_bytes + $1 WHERE id = $2");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(n)
                    .bind(id.clone())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Bytes served per package id (full payloads).
    pub async fn package_served_bytes(&self, app: &str) -> Result<Vec<(String, i64)>> {
        Ok(
            sqlx::query_as("SELECT id, served_bytes FROM packages WHERE app_id = $1")
                .bind(app.to_owned())
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(id: &str, version: &str, arch: &str, hosted: bool) -> PackageRow {
        PackageRow {
            id: id.into(),
            app_id: "app".into(),
            version: version.into(),
            arch: arch.into(),
            file_name: "update.gz".into(),
            base_url: (!hosted).then(|| "https://cdn.example/".to_owned()),
            size: 100,
            sha1_b64: String::new(),
            sha256_b64: String::new(),
            created_at: 0,
            payload_ops: None,
            image_sha256: None,
        }
    }

    fn past(version: &str, history: &[&str]) -> ChannelPast {
        ChannelPast {
            version: Some(version.into()),
            history: history.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn pairs(jobs: &[DeltaJob]) -> Vec<(String, String, String)> {
        jobs.iter()
            .map(|j| {
                (
                    j.source.version.clone(),
                    j.target.version.clone(),
                    j.target.arch.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn the_previous_n_distinct_versions_of_each_channel() {
        let packages = [
            pkg("a1", "1", "amd64", true),
            pkg("a2", "2", "amd64", true),
            pkg("a3", "3", "amd64", true),
            pkg("a4", "4", "amd64", true),
        ];
        // 4 now; before it 3, 3 again, 2, 1.
        let ch = [past("4", &["4", "3", "3", "2", "1"])];
        let jobs = plan(&ch, &packages, &HashSet::new(), 2);
        assert_eq!(
            pairs(&jobs),
            [
                ("3".into(), "4".into(), "amd64".into()),
                ("2".into(), "4".into(), "amd64".into())
            ]
        );
        // A delta made (any state) is not planned again; two channels wanting the same
        // delta plan it once.
        let made = HashSet::from([("a4".to_owned(), "3".to_owned())]);
        let both = [past("4", &["4", "3", "2"]), past("4", &["4", "2"])];
        assert_eq!(
            pairs(&plan(&both, &packages, &made, 2)),
            [("2".into(), "4".into(), "amd64".into())]
        );
        assert!(plan(&ch, &packages, &HashSet::new(), 0).is_empty());
    }

    #[test]
    fn only_hosted_payloads_of_the_same_arch() {
        let packages = [
            pkg("a1", "1", "amd64", true),
            pkg("r1", "1", "arm64", false),
            pkg("a2", "2", "amd64", true),
            pkg("r2", "2", "arm64", true),
            pkg("a3", "3", "amd64", false),
        ];
        let jobs = plan(&[past("2", &["2", "1"])], &packages, &HashSet::new(), 2);
        assert_eq!(pairs(&jobs), [("1".into(), "2".into(), "amd64".into())]);
        // A target served from a CDN gets no delta here.
        assert!(plan(&[past("3", &["3", "2"])], &packages, &HashSet::new(), 2).is_empty());
        // A channel with no version, or no past, wants nothing.
        let none = ChannelPast {
            version: None,
            history: vec!["1".into()],
        };
        assert!(plan(&[none, past("1", &["1"])], &packages, &HashSet::new(), 2).is_empty());
    }
}
