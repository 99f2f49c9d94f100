//! A package's other payloads: the same image written with other operations (the
//! Flatcar-compatible bzip2 payload next to fastpatch's zstd one), so every client is
//! offered a payload it can apply.

use serde::{Deserialize, Serialize};

use super::activity::{record, Activity, ActivityKind};
use super::{PackageRow, Result, Store, StoreError};

/// A second payload of a package, hosted here under `/v1/payloads/{id}/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct VariantRow {
    pub id: String,
    pub package_id: String,
    /// The operations it uses ([`fastpatch_omaha::PayloadOps`], comma-separated).
    pub payload_ops: String,
    pub file_name: String,
    pub size: i64,
    pub sha1_b64: String,
    pub sha256_b64: String,
    pub served_bytes: i64,
    pub created_at: i64,
}

impl VariantRow {
    pub fn ops(&self) -> fastpatch_omaha::PayloadOps {
        fastpatch_omaha::PayloadOps::parse(&self.payload_ops)
    }
}

const VARIANT_SELECT: &str = "SELECT v.id, v.package_id, v.payload_ops, v.file_name, v.size, v.sha1_b64, v.sha256_b64, v.served_bytes, v.created_at FROM package_variants v JOIN packages p ON p.id = v.package_id";

impl Store {
    /// Registers `v` as another payload of `pkg`, with an activity entry, in one transaction.
    /// Registering the identical variant again returns the stored one; a variant must use
    /// other operations than the package's own payload and than its other variants.
    pub async fn add_variant(&self, pkg: &PackageRow, v: &VariantRow) -> Result<VariantRow> {
        let label = format!("{} ({})", pkg.version, pkg.arch);
        if pkg.ops().as_ref() == Some(&v.ops()) {
            return Err(StoreError::Invalid(format!(
                "version {label} is already published with a payload using {}",
                v.ops()
            )));
        }
        if let Some(existing) = self
            .variants(&pkg.app_id)
            .await?
            .into_iter()
            .find(|x| x.package_id == pkg.id && x.ops() == v.ops())
        {
            if existing.sha256_b64 == v.sha256_b64 && existing.size == v.size {
                return Ok(existing);
            }
            return Err(StoreError::Invalid(format!(
                "version {label} already has a payload using {} with different contents",
                v.ops()
            )));
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO package_variants (id, package_id, payload_ops, file_name, size, sha1_b64, sha256_b64, served_bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8)")
            .bind(v.id.clone())
            .bind(v.package_id.clone())
            .bind(v.ops().to_string())
            .bind(v.file_name.clone())
            .bind(v.size)
            .bind(v.sha1_b64.clone())
            .bind(v.sha256_b64.clone())
            .bind(v.created_at)
            .execute(&mut *tx)
            .await?;
        let message = format!(
            "package {label}: a second payload using {} published ({} bytes)",
            v.ops(),
            v.size
        );
        let kind = ActivityKind::PackageVariantPublished;
        let entry = Activity::app(
            &pkg.app_id,
            kind,
            Some(&pkg.version),
            &message,
            v.created_at,
        );
        record(&mut *tx, &entry).await?;
        tx.commit().await?;
        self.cache.clear();
        Ok(v.clone())
    }

    /// Records what a package's payload uses, if nothing is recorded yet (packages published
    /// before the server recorded it). True when the row changed.
    pub async fn record_payload_ops(
        &self,
        package_id: &str,
        ops: &fastpatch_omaha::PayloadOps,
        image_sha256: &str,
    ) -> Result<bool> {
        let n = sqlx::query("UPDATE packages SET payload_ops = $1, image_sha256 = $2 WHERE id = $3 AND payload_ops IS NULL")
            .bind(ops.to_string())
            .bind(image_sha256.to_owned())
            .bind(package_id.to_owned())
            .execute(&self.pool)
            .await?
            .rows_affected();
        self.cache.clear();
        Ok(n == 1)
    }

    /// Every variant of an application's packages, oldest first.
    pub async fn variants(&self, app: &str) -> Result<Vec<VariantRow>> {
        let sql = format!("{VARIANT_SELECT} WHERE p.app_id = $1 ORDER BY v.created_at, v.id");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(app.to_owned())
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn variant(&self, id: &str) -> Result<Option<VariantRow>> {
        let sql = format!("{VARIANT_SELECT} WHERE v.id = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?)
    }
}
