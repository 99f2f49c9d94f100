//! Packages: hosted or elsewhere (a CDN), with optional extra files.
//! A published (app, version, arch) never changes: same bytes, same files.

use std::collections::HashMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::activity::{record, Activity, ActivityKind};
use super::{Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct PackageRow {
    pub id: String,
    pub app_id: String,
    pub version: String,
    pub arch: String,
    pub file_name: String,
    /// `None`: hosted by this server.
    pub base_url: Option<String>,
    pub size: i64,
    pub sha1_b64: String,
    pub sha256_b64: String,
    pub created_at: i64,
    /// The operations the payload uses ([`fastpatch_omaha::PayloadOps`], comma-separated);
    /// `None`: not known (see [`PackageRow::ops`]).
    pub payload_ops: Option<String>,
    /// The SHA-256 (hex) of the image the payload writes; `None`: not known.
    pub image_sha256: Option<String>,
}

impl PackageRow {
    /// The operations a client must apply to use this payload; `None` when not known (a
    /// package registered at another URL without them, or published before they were
    /// recorded): such a payload is offered to every client, as before.
    pub fn ops(&self) -> Option<fastpatch_omaha::PayloadOps> {
        self.payload_ops
            .as_deref()
            .map(fastpatch_omaha::PayloadOps::parse)
    }
}

const PACKAGE_COLS: &str = "id, app_id, version, arch, file_name, base_url, size, sha1_b64, sha256_b64, created_at, payload_ops, image_sha256";

/// An extra file of a package (Nebraska's model): served next to the payload
/// (same codebase), listed after it in the Omaha manifest, not required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct PackageFile {
    pub name: String,
    pub size: i64,
    pub sha1_b64: String,
    pub sha256_b64: String,
}

/// A package hosted elsewhere, as the admin API and CLI take it. Hashes are
/// hex or base64; `url` is the codebase (ending in `/`, then `file_name` is
/// needed) or the payload's full URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalPackage {
    pub version: String,
    #[serde(default)]
    pub arch: Option<String>,
    pub url: String,
    #[serde(default)]
    pub file_name: Option<String>,
    pub size: u64,
    pub sha1: String,
    pub sha256: String,
    #[serde(default)]
    pub extra_files: Vec<ExtraFile>,
    /// The operations the payload uses, comma-separated (`REPLACE,REPLACE_BZ` for a payload
    /// made like Flatcar's). Unset: not known, and the payload is offered to every client.
    #[serde(default)]
    pub payload_ops: Option<String>,
}

/// An extra file as given: name, size, hex or base64 hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraFile {
    pub name: String,
    pub size: u64,
    pub sha1: String,
    pub sha256: String,
}

/// A digest of `N` bytes from hex (2N digits) or standard base64, as base64.
pub fn digest_b64<const N: usize>(what: &str, s: &str) -> Result<String> {
    let s = s.trim();
    let bytes = if s.len() == 2 * N && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(s).ok()
    } else {
        base64::engine::general_purpose::STANDARD.decode(s).ok()
    };
    match bytes {
        Some(b) if b.len() == N => Ok(fastpatch_omaha::encode_b64(&b)),
        _ => Err(StoreError::Invalid(format!(
            "{what} is not a {N}-byte digest in hex or base64"
        ))),
    }
}

/// A file name clients append to the codebase: no path, nothing hidden.
pub fn check_file_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('.')
        || name.contains(['/', '\\', '?', '#'])
        || name.chars().any(char::is_control)
    {
        return Err(StoreError::Invalid(format!(
            "{name:?} is not a plain file name"
        )));
    }
    Ok(())
}

impl ExternalPackage {
    /// Checks and normalises into the rows to store (pure; no I/O).
    pub fn to_rows(
        &self,
        app_id: &str,
        id: String,
        now: i64,
    ) -> Result<(PackageRow, Vec<PackageFile>)> {
        let bad = |m: String| Err(StoreError::Invalid(m));
        let url = self.url.trim();
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.contains(char::is_whitespace)
        {
            return bad(format!("url {url:?} is not an http(s) URL"));
        }
        let (base, file_name) = match (url.rsplit_once('/'), &self.file_name) {
            (_, Some(name)) if url.ends_with('/') => (url.to_owned(), name.clone()),
            (Some((base, last)), given) if !last.is_empty() => {
                if given.as_deref().is_some_and(|g| g != last) {
                    return bad(format!("url ends in {last:?} but file_name is {given:?}"));
                }
                (format!("{base}/"), last.to_owned())
            }
            _ => return bad("url ends in / but no file_name is given".into()),
        };
        if base.len() <= "https://".len() + 1 {
            return bad(format!("url {url:?} has no host"));
        }
        check_file_name(&file_name)?;
        if self.version.trim().is_empty() {
            return bad("version must not be empty".into());
        }
        if self.size == 0 || self.size > i64::MAX as u64 {
            return bad("size must be positive".into());
        }
        let mut files = Vec::with_capacity(self.extra_files.len());
        for f in &self.extra_files {
            check_file_name(&f.name)?;
            if f.name == file_name || files.iter().any(|x: &PackageFile| x.name == f.name) {
                return bad(format!("extra file {:?} is listed twice", f.name));
            }
            if f.size == 0 || f.size > i64::MAX as u64 {
                return bad(format!("extra file {:?}: size must be positive", f.name));
            }
            files.push(PackageFile {
                name: f.name.clone(),
                size: f.size as i64,
                sha1_b64: digest_b64::<20>("sha1", &f.sha1)?,
                sha256_b64: digest_b64::<32>("sha256", &f.sha256)?,
            });
        }
        let row = PackageRow {
            id,
            app_id: fastpatch_omaha::normalize_appid(app_id),
            version: self.version.trim().to_owned(),
            arch: super::normalize_arch(self.arch.as_deref()),
            file_name,
            base_url: Some(base),
            size: self.size as i64,
            sha1_b64: digest_b64::<20>("sha1", &self.sha1)?,
            sha256_b64: digest_b64::<32>("sha256", &self.sha256)?,
            created_at: now,
            payload_ops: match self
                .payload_ops
                .as_deref()
                .map(fastpatch_omaha::PayloadOps::parse)
            {
                Some(ops) if ops.is_empty() => {
                    return bad("payload_ops must name operations".into())
                }
                ops => ops.map(|o| o.to_string()),
            },
            image_sha256: None,
        };
        Ok((row, files))
    }
}

impl Store {
    /// Registers a package; refuses to change the bytes behind an existing
    /// (app, version, arch): a version's payload is immutable.
    pub async fn add_package(&self, p: &PackageRow) -> Result<PackageRow> {
        self.add_package_with_files(p, &[]).await
    }

    /// Registers a package and its extra files in one transaction.
    /// Registering the identical package again returns the stored one.
    pub async fn add_package_with_files(
        &self,
        p: &PackageRow,
        files: &[PackageFile],
    ) -> Result<PackageRow> {
        self.cache.clear();
        if let Some(existing) = self.find_package(&p.app_id, &p.version, &p.arch).await? {
            let same_files = self.package_files(&existing.id).await? == files;
            if existing.sha256_b64 == p.sha256_b64 && existing.size == p.size && same_files {
                return Ok(existing);
            }
            return Err(StoreError::Invalid(format!(
                "version {} ({}) is already published with different contents",
                p.version, p.arch
            )));
        }
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO packages (id, app_id, version, arch, file_name, base_url, size, sha1_b64, sha256_b64, created_at, payload_ops, image_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(p.id.clone())
        .bind(p.app_id.clone())
        .bind(p.version.clone())
        .bind(p.arch.clone())
        .bind(p.file_name.clone())
        .bind(p.base_url.clone())
        .bind(p.size)
        .bind(p.sha1_b64.clone())
        .bind(p.sha256_b64.clone())
        .bind(p.created_at)
        .bind(p.payload_ops.clone())
        .bind(p.image_sha256.clone())
        .execute(&mut *tx)
        .await?;
        for (i, f) in files.iter().enumerate() {
            sqlx::query("INSERT INTO package_files (package_id, position, name, size, sha1_b64, sha256_b64) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(p.id.clone())
                .bind(i as i64)
                .bind(f.name.clone())
                .bind(f.size)
                .bind(f.sha1_b64.clone())
                .bind(f.sha256_b64.clone())
                .execute(&mut *tx)
                .await?;
        }
        let where_ = match &p.base_url {
            Some(u) => format!(" at {u}"),
            None => String::new(),
        };
        let extra = match files.len() {
            0 => String::new(),
            n => format!(", {n} extra files"),
        };
        let message = format!(
            "package {} {} published ({} bytes{where_}{extra})",
            p.version, p.arch, p.size
        );
        let kind = ActivityKind::PackagePublished;
        let entry = Activity::app(&p.app_id, kind, Some(&p.version), &message, p.created_at);
        record(&mut *tx, &entry).await?;
        tx.commit().await?;
        self.cache.clear();
        Ok(p.clone())
    }

    /// Registers a package hosted elsewhere (checked by [`ExternalPackage::to_rows`]).
    pub async fn register_external(
        &self,
        app_id: &str,
        ext: &ExternalPackage,
        now: i64,
    ) -> Result<(PackageRow, Vec<PackageFile>)> {
        let app = fastpatch_omaha::normalize_appid(app_id);
        if !self.app_exists(&app).await? {
            return Err(StoreError::NotFound(format!("application {app}")));
        }
        let (row, files) = ext.to_rows(&app, uuid::Uuid::new_v4().simple().to_string(), now)?;
        let stored = self.add_package_with_files(&row, &files).await?;
        let files = self.package_files(&stored.id).await?;
        Ok((stored, files))
    }

    /// A package's extra files, in manifest order.
    pub async fn package_files(&self, package_id: &str) -> Result<Vec<PackageFile>> {
        Ok(sqlx::query_as("SELECT name, size, sha1_b64, sha256_b64 FROM package_files WHERE package_id = $1 ORDER BY position")
            .bind(package_id.to_owned())
            .fetch_all(&self.pool)
            .await?)
    }

    /// Extra files of all of an app's packages, by package id.
    pub async fn app_package_files(&self, app: &str) -> Result<HashMap<String, Vec<PackageFile>>> {
        let rows: Vec<(String, String, i64, String, String)> = sqlx::query_as(
            "SELECT f.package_id, f.name, f.size, f.sha1_b64, f.sha256_b64 FROM package_files f JOIN packages p ON p.id = f.package_id WHERE p.app_id = $1 ORDER BY f.package_id, f.position",
        )
        .bind(app.to_owned())
        .fetch_all(&self.pool)
        .await?;
        let mut out: HashMap<String, Vec<PackageFile>> = HashMap::new();
        for (id, name, size, sha1_b64, sha256_b64) in rows {
            out.entry(id).or_default().push(PackageFile {
                name,
                size,
                sha1_b64,
                sha256_b64,
            });
        }
        Ok(out)
    }

    pub async fn find_package(
        &self,
        app: &str,
        version: &str,
        arch: &str,
    ) -> Result<Option<PackageRow>> {
        let sql = format!(
            "SELECT {PACKAGE_COLS} FROM packages WHERE app_id = $1 AND version = $2 AND arch = $3"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(app.to_owned())
            .bind(version.to_owned())
            .bind(arch.to_owned())
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn package(&self, id: &str) -> Result<Option<PackageRow>> {
        let sql = format!("SELECT {PACKAGE_COLS} FROM packages WHERE id = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn packages(&self, app: &str) -> Result<Vec<PackageRow>> {
        let sql = format!(
            "SELECT {PACKAGE_COLS} FROM packages WHERE app_id = $1 ORDER BY created_at, id"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(app.to_owned())
            .fetch_all(&self.pool)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA1_HEX: &str = "0123456789abcdef0123456789abcdef01234567";

    fn ext() -> ExternalPackage {
        ExternalPackage {
            version: "3815.2.0".into(),
            arch: Some("amd64-usr".into()),
            url: "https://cdn.example/amd64-usr/3815.2.0/flatcar_production_update.gz".into(),
            file_name: None,
            size: 1000,
            sha1: SHA1_HEX.into(),
            sha256: fastpatch_omaha::encode_b64(&[9u8; 32]),
            extra_files: vec![ExtraFile {
                name: "oem-azure.gz".into(),
                size: 5,
                sha1: fastpatch_omaha::encode_b64(&[1u8; 20]),
                sha256: hex::encode([2u8; 32]),
            }],
            payload_ops: None,
        }
    }

    #[test]
    fn digests_in_hex_or_base64() {
        let b = digest_b64::<20>("sha1", SHA1_HEX).unwrap();
        assert_eq!(digest_b64::<20>("sha1", &b).unwrap(), b);
        assert!(digest_b64::<20>("sha1", "abcd").is_err());
        assert!(
            digest_b64::<32>("sha256", SHA1_HEX).is_err(),
            "wrong length"
        );
        assert!(digest_b64::<20>("sha1", "not base64!").is_err());
    }

    #[test]
    fn full_url_or_codebase_plus_name() {
        let (row, files) = ext()
            .to_rows("{E96281A6-D1AF-4BDE-9A0A-97B76E56DC57}", "id".into(), 7)
            .unwrap();
        assert_eq!(row.app_id, fastpatch_omaha::FLATCAR_APP_ID);
        assert_eq!(
            row.base_url.as_deref(),
            Some("https://cdn.example/amd64-usr/3815.2.0/")
        );
        assert_eq!(row.file_name, "flatcar_production_update.gz");
        assert_eq!(row.arch, "amd64");
        assert_eq!(row.sha256_b64, fastpatch_omaha::encode_b64(&[9u8; 32]));
        assert_eq!(files[0].sha256_b64, fastpatch_omaha::encode_b64(&[2u8; 32]));
        let codebase = ExternalPackage {
            url: "https://cdn.example/x/".into(),
            file_name: Some("update.gz".into()),
            ..ext()
        };
        let (row, _) = codebase.to_rows("a", "id".into(), 7).unwrap();
        assert_eq!(
            (row.base_url.as_deref(), row.file_name.as_str()),
            (Some("https://cdn.example/x/"), "update.gz")
        );
    }

    #[test]
    fn bad_registrations_are_refused() {
        let cases = [
            ExternalPackage {
                url: "ftp://cdn.example/u.gz".into(),
                ..ext()
            },
            ExternalPackage {
                url: "https://cdn.example/x/".into(),
                ..ext()
            },
            ExternalPackage {
                file_name: Some("other.gz".into()),
                ..ext()
            },
            ExternalPackage { size: 0, ..ext() },
            ExternalPackage {
                version: " ".into(),
                ..ext()
            },
            ExternalPackage {
                sha256: SHA1_HEX.into(),
                ..ext()
            },
            ExternalPackage {
                extra_files: vec![ExtraFile {
                    name: "../x".into(),
                    ..ext().extra_files[0].clone()
                }],
                ..ext()
            },
            ExternalPackage {
                extra_files: vec![ext().extra_files[0].clone(), ext().extra_files[0].clone()],
                ..ext()
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(
                c.to_rows("a", "id".into(), 0).is_err(),
                "case {i} accepted: {c:?}"
            );
        }
    }
}
