//! Publishing payload files (hash, store, register) and serving them with
//! Range, ETag and exact Content-Length so clients can resume.

use std::io::Read;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::store::{PackageFile, PackageRow, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("reading {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("storing payload: {0}")]
    Write(std::io::Error),
    #[error("the payload file is empty")]
    Empty,
    #[error("unknown application {0}")]
    UnknownApp(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct Publish<'a> {
    pub app_id: &'a str,
    pub version: &'a str,
    pub arch: &'a str,
    pub file: &'a Path,
    /// Name clients download it as; defaults to the file's name.
    pub file_name: Option<&'a str>,
    /// Serve from elsewhere (a CDN): the codebase URL, ending in `/`.
    pub base_url: Option<&'a str>,
}

pub fn payload_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("payloads")
}

/// Where a hosted package's extra file lives.
pub fn extra_file_path(data_dir: &Path, package_id: &str, name: &str) -> PathBuf {
    payload_dir(data_dir)
        .join(format!("{package_id}.files"))
        .join(name)
}

/// Hashes `file` (SHA-1, SHA-256, size), copies it under the data dir unless
/// it is served elsewhere, and registers the package. Re-publishing identical
/// bytes is a no-op; different bytes for a published version are refused.
pub async fn publish(
    store: &Store,
    data_dir: &Path,
    p: &Publish<'_>,
    now: i64,
) -> Result<PackageRow, PublishError> {
    Ok(publish_with_files(store, data_dir, p, &[], now)
        .await?
        .package)
}

/// What [`publish_with_files`] registered.
#[derive(Debug, Clone)]
pub struct Published {
    /// The version's package (the one already published, when `variant` is set).
    pub package: PackageRow,
    /// Set when the file writes the package's image with other operations: it is hosted as
    /// a second payload of the package (see [`crate::variants`]).
    pub variant: Option<crate::store::VariantRow>,
}

/// [`publish`] with extra files (served next to the payload, listed after it).
/// Files are in place before the package row is written, so a registered
/// hosted package always has its bytes.
pub async fn publish_with_files(
    store: &Store,
    data_dir: &Path,
    p: &Publish<'_>,
    extra: &[PathBuf],
    now: i64,
) -> Result<Published, PublishError> {
    let app_id = fastpatch_omaha::normalize_appid(p.app_id);
    if !store.app_exists(&app_id).await? {
        return Err(PublishError::UnknownApp(app_id));
    }
    let dir = payload_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(PublishError::Write)?;
    let tmp = dir.join(format!(".incoming-{}", uuid::Uuid::new_v4()));
    let hosted = p.base_url.is_none();
    let src = p.file.to_owned();
    let tmp2 = tmp.clone();
    let (size, sha1, sha256) =
        tokio::task::spawn_blocking(move || hash_and_copy(&src, hosted.then_some(tmp2.as_path())))
            .await
            .map_err(|e| PublishError::Write(std::io::Error::other(e)))??;
    if size == 0 {
        let _ = std::fs::remove_file(&tmp);
        return Err(PublishError::Empty);
    }
    let inspected = match crate::variants::inspect(p.file).await {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let file_name = match p.file_name {
        Some(n) => n.to_owned(),
        None => p
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "update.gz".to_owned()),
    };
    let row = PackageRow {
        id: uuid::Uuid::new_v4().simple().to_string(),
        app_id,
        version: p.version.to_owned(),
        arch: crate::store::normalize_arch(Some(p.arch)),
        file_name,
        base_url: p.base_url.map(|u| {
            if u.ends_with('/') {
                u.to_owned()
            } else {
                format!("{u}/")
            }
        }),
        size: size as i64,
        sha1_b64: fastpatch_omaha::encode_b64(&sha1),
        sha256_b64: fastpatch_omaha::encode_b64(&sha256),
        created_at: now,
        payload_ops: inspected.as_ref().map(|i| i.ops.to_string()),
        image_sha256: inspected.map(|i| i.image_sha256),
    };
    let id = row.id.clone();
    let files_dir = extra_file_path(data_dir, &id, "x")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.clone());
    let cleanup = |dest_written: bool| {
        let _ = std::fs::remove_file(&tmp);
        if dest_written {
            let _ = std::fs::remove_file(dir.join(&id));
        }
        let _ = std::fs::remove_dir_all(&files_dir);
    };
    let files = match hash_extra_files(extra, hosted.then_some(files_dir.as_path())).await {
        Ok(f) => f,
        Err(e) => {
            cleanup(false);
            return Err(e);
        }
    };
    // The same image in other operations (a Flatcar-compatible payload of a zstd one, or
    // the reverse): a second payload of the published package, which keeps its extra files.
    let existing = store
        .find_package(&row.app_id, &row.version, &row.arch)
        .await;
    if let Ok(Some(existing)) = existing.as_ref() {
        if hosted && crate::variants::is_other_encoding(existing, &row) {
            let result =
                publish_second_payload(store, data_dir, existing, &row, &files, &tmp).await;
            cleanup(false);
            return result;
        }
    }
    if hosted {
        if let Err(e) = std::fs::rename(&tmp, dir.join(&id)) {
            cleanup(false);
            return Err(PublishError::Write(e));
        }
    }
    match store.add_package_with_files(&row, &files).await {
        // Newly registered: the files just placed are its files.
        Ok(stored) if stored.id == id => Ok(Published {
            package: stored,
            variant: None,
        }),
        // The identical package was already there: its bytes are these
        // bytes, so they restore a payload file that went missing.
        Ok(stored) => {
            if hosted && !dir.join(&stored.id).exists() {
                let _ = std::fs::rename(dir.join(&id), dir.join(&stored.id));
                let theirs = extra_file_path(data_dir, &stored.id, "x");
                if let Some(theirs) = theirs.parent().filter(|d| !d.exists()) {
                    let _ = std::fs::rename(&files_dir, theirs);
                }
            }
            cleanup(hosted);
            Ok(Published {
                package: stored,
                variant: None,
            })
        }
        Err(e) => {
            cleanup(hosted);
            Err(e.into())
        }
    }
}

/// `row` writes `existing`'s image with other operations: host it as a second payload of the
/// package, which keeps its extra files (the same ones, or none given).
async fn publish_second_payload(
    store: &Store,
    data_dir: &Path,
    existing: &PackageRow,
    row: &PackageRow,
    files: &[PackageFile],
    incoming: &Path,
) -> Result<Published, PublishError> {
    if !files.is_empty() && store.package_files(&existing.id).await? != files {
        return Err(StoreError::Invalid(format!(
            "version {} ({}) is published with other extra files; a second payload of it keeps those",
            row.version, row.arch
        ))
        .into());
    }
    let variant = crate::variants::publish(store, data_dir, existing, row, incoming).await?;
    Ok(Published {
        package: existing.clone(),
        variant: Some(variant),
    })
}

/// Hashes each extra file (copying it into `copy_to` when the package is hosted here); the
/// rows to register, in the order given.
async fn hash_extra_files(
    extra: &[PathBuf],
    copy_to: Option<&Path>,
) -> Result<Vec<PackageFile>, PublishError> {
    let mut files = Vec::with_capacity(extra.len());
    for path in extra {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        crate::store::check_file_name(&name)?;
        let src = path.clone();
        let dest = copy_to.map(|d| d.join(&name));
        let (size, sha1, sha256) = tokio::task::spawn_blocking(move || {
            if let Some(parent) = dest.as_deref().and_then(Path::parent) {
                std::fs::create_dir_all(parent).map_err(PublishError::Write)?;
            }
            hash_and_copy(&src, dest.as_deref())
        })
        .await
        .unwrap_or_else(|e| Err(PublishError::Write(std::io::Error::other(e))))?;
        if size == 0 {
            return Err(PublishError::Empty);
        }
        files.push(PackageFile {
            name,
            size: size as i64,
            sha1_b64: fastpatch_omaha::encode_b64(&sha1),
            sha256_b64: fastpatch_omaha::encode_b64(&sha256),
        });
    }
    Ok(files)
}

/// A delta payload made elsewhere (`fastpatch payload generate --source`), to host and offer
/// next to its full packages; the server needs no signing key for it.
#[derive(Debug, Clone)]
pub struct PublishDelta<'a> {
    pub app_id: &'a str,
    /// The version the delta builds and the version it applies to (both published).
    pub version: &'a str,
    pub source_version: &'a str,
    pub arch: &'a str,
    pub file: &'a Path,
}

/// Checks that `d.file` is a delta from `source_version` (its manifest says so, when it
/// names a version), hosts it and registers it as ready. Refused when the two packages are
/// not published or a delta for the pair already exists (`delta retry` forgets one that
/// failed).
pub async fn publish_delta(
    store: &Store,
    data_dir: &Path,
    d: &PublishDelta<'_>,
    now: i64,
) -> Result<crate::store::DeltaRow, PublishError> {
    use crate::store::{DeltaRow, DeltaState};
    let app_id = fastpatch_omaha::normalize_appid(d.app_id);
    let arch = crate::store::normalize_arch(Some(d.arch));
    let label = format!("{} → {} ({arch})", d.source_version, d.version);
    let package = |version: &str| {
        let (store, app_id, arch) = (store, app_id.clone(), arch.clone());
        let version = version.to_owned();
        async move {
            store
                .find_package(&app_id, &version, &arch)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("package {version} ({arch})")))
        }
    };
    let target = package(d.version).await?;
    let source = package(d.source_version).await?;
    if store
        .deltas(&app_id)
        .await?
        .iter()
        .any(|x| x.package_id == target.id && x.source_version == d.source_version)
    {
        return Err(StoreError::Invalid(format!(
            "a delta {label} exists already (`fastpatch-server packages` shows it)"
        ))
        .into());
    }
    let src = d.file.to_owned();
    let inspection = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&src).map_err(|error| PublishError::Read {
            path: src.clone(),
            error,
        })?;
        fastpatch_payload::verify::inspect(std::io::BufReader::new(f))
            .map_err(|e| StoreError::Invalid(format!("{} is not a payload: {e}", src.display())))
            .map_err(PublishError::from)
    })
    .await
    .map_err(|e| PublishError::Write(std::io::Error::other(e)))??;
    match &inspection.delta_source {
        None => {
            return Err(StoreError::Invalid(format!(
                "{} is a full payload, not a delta (publish it as a package)",
                d.file.display()
            ))
            .into())
        }
        Some(s) if s.version.as_deref().is_some_and(|v| v != d.source_version) => {
            return Err(StoreError::Invalid(format!(
                "{} applies to {}, not {}",
                d.file.display(),
                s.version.as_deref().unwrap_or_default(),
                d.source_version
            ))
            .into())
        }
        Some(_) => {}
    }
    let dir = payload_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(PublishError::Write)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let incoming = dir.join(format!(".incoming-{id}"));
    let (src, tmp) = (d.file.to_owned(), incoming.clone());
    let hashed = tokio::task::spawn_blocking(move || hash_and_copy(&src, Some(&tmp)))
        .await
        .map_err(|e| PublishError::Write(std::io::Error::other(e)))?;
    let (size, sha1, sha256) = match hashed {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_file(&incoming);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&incoming, dir.join(&id)) {
        let _ = std::fs::remove_file(&incoming);
        return Err(PublishError::Write(e));
    }
    let row = DeltaRow {
        id: id.clone(),
        app_id: app_id.clone(),
        package_id: target.id.clone(),
        version: target.version.clone(),
        arch: arch.clone(),
        source_version: d.source_version.to_owned(),
        source_package_id: source.id.clone(),
        state: DeltaState::Ready,
        file_name: crate::deltas::delta_file_name(d.source_version, d.version),
        size: size as i64,
        sha1_b64: fastpatch_omaha::encode_b64(&sha1),
        sha256_b64: fastpatch_omaha::encode_b64(&sha256),
        note: Some("published".into()),
        served_bytes: 0,
        created_at: now,
    };
    let message = format!(
        "delta {label} published: {size} bytes, {:.1} % of the {}-byte full payload",
        100.0 * size as f64 / target.size.max(1) as f64,
        target.size
    );
    match store.add_delta(&row, &message).await {
        Ok(true) => Ok(row),
        Ok(false) => {
            let _ = std::fs::remove_file(dir.join(&id));
            Err(StoreError::Invalid(format!("a delta {label} was recorded meanwhile")).into())
        }
        Err(e) => {
            let _ = std::fs::remove_file(dir.join(&id));
            Err(e.into())
        }
    }
}

/// Hashes `src` (size, SHA-1, SHA-256), copying it to `copy_to` (synced) on the way.
pub(crate) fn hash_and_copy(
    src: &Path,
    copy_to: Option<&Path>,
) -> Result<(u64, [u8; 20], [u8; 32]), PublishError> {
    use std::io::Write;
    let read_err = |e| PublishError::Read {
        path: src.to_owned(),
        error: e,
    };
    let mut f = std::fs::File::open(src).map_err(read_err)?;
    let mut out = match copy_to {
        Some(p) => Some(std::fs::File::create(p).map_err(PublishError::Write)?),
        None => None,
    };
    let mut s1 = Sha1::new();
    let mut s256 = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        s1.update(&buf[..n]);
        s256.update(&buf[..n]);
        if let Some(o) = out.as_mut() {
            o.write_all(&buf[..n]).map_err(PublishError::Write)?;
        }
        size += n as u64;
    }
    if let Some(o) = out {
        o.sync_all().map_err(PublishError::Write)?;
    }
    Ok((size, s1.finalize().into(), s256.finalize().into()))
}

/// A parsed single `Range: bytes=…` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    Full,
    Partial { start: u64, end: u64 },
    Unsatisfiable,
}

/// Interprets a Range header for a resource of `size` bytes. Multi-range and
/// malformed headers are ignored (the whole resource is served, as RFC 9110 allows).
pub fn parse_range(header: Option<&str>, size: u64) -> RangeSpec {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return RangeSpec::Full;
        };
        if n == 0 || size == 0 {
            return RangeSpec::Unsatisfiable;
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return RangeSpec::Full;
        };
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.min(size.saturating_sub(1)),
                _ => return RangeSpec::Full,
            }
        };
        if start >= size {
            return RangeSpec::Unsatisfiable;
        }
        (start, end)
    };
    RangeSpec::Partial {
        start: range.0,
        end: range.1,
    }
}

/// Serves a file of known size and SHA-256 (the ETag) with Range support.
pub async fn serve_file(path: &Path, size: i64, sha256_b64: &str, headers: &HeaderMap) -> Response {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(_) => return (StatusCode::NOT_FOUND, "payload file missing").into_response(),
    };
    let size = size.max(0) as u64;
    let etag = format!("\"{sha256_b64}\"");
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .map(|v| v.to_str().ok() == Some(etag.as_str()))
        .unwrap_or(true);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag || v == "*")
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let spec = if if_range_ok {
        parse_range(range_header, size)
    } else {
        RangeSpec::Full
    };
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let (status, start, len) = match spec {
        RangeSpec::Full => (StatusCode::OK, 0, size),
        RangeSpec::Partial { start, end } => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeSpec::Unsatisfiable => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .header(header::ETAG, etag)
                .body(Body::empty())
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
    };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "seek failed").into_response();
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 * 1024);
    builder
        .status(status)
        .header(header::CONTENT_LENGTH, HeaderValue::from(len))
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), RangeSpec::Full);
        assert_eq!(
            parse_range(Some("bytes=0-9"), 100),
            RangeSpec::Partial { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=90-"), 100),
            RangeSpec::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=-10"), 100),
            RangeSpec::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=50-500"), 100),
            RangeSpec::Partial { start: 50, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=100-"), 100),
            RangeSpec::Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=-0"), 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=9-3"), 100), RangeSpec::Full);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), RangeSpec::Full);
        assert_eq!(parse_range(Some("items=0-1"), 100), RangeSpec::Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 100), RangeSpec::Full);
    }
}
