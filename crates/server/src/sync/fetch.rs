//! Downloading one file of an upstream release into the sync work directory: resumed with a
//! Range request from what an earlier, interrupted run left (`NAME.part`), tried at each
//! codebase in turn, and renamed to its name only once its size and hashes match. A file
//! that does not match is removed (it would never become right by resuming).

use std::path::{Path, PathBuf};

use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{Reporter, SyncError};

/// What a file must be.
#[derive(Debug, Clone)]
pub struct Wanted<'a> {
    pub name: &'a str,
    pub size: u64,
    pub sha256: [u8; 32],
    pub sha1: Option<[u8; 20]>,
    /// Codebases (ending in `/`) to try in order; the name is appended.
    pub codebases: &'a [String],
}

/// The verified file `dir/NAME`, downloaded (or resumed) unless it is already there.
pub async fn fetch(
    client: &reqwest::Client,
    dir: &Path,
    want: &Wanted<'_>,
    reporter: &mut Reporter<'_>,
) -> Result<PathBuf, SyncError> {
    let done = dir.join(want.name);
    if done.exists() {
        if check(&done, want).await.is_ok() {
            return Ok(done);
        }
        remove(&done)?;
    }
    let part = dir.join(format!("{}.part", want.name));
    let mut last = None;
    for codebase in want.codebases {
        let url = format!("{codebase}{}", want.name);
        match download(client, &url, &part, want, reporter).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => {
                tracing::warn!(%url, error = %e, "sync download failed");
                last = Some(e);
            }
        }
    }
    if let Some(e) = last {
        return Err(e);
    }
    if want.codebases.is_empty() {
        return Err(SyncError::UpstreamAnswer(
            "no codebase to download from".into(),
        ));
    }
    reporter.verifying(want.name).await;
    if let Err(e) = check(&part, want).await {
        remove(&part)?;
        return Err(e);
    }
    std::fs::rename(&part, &done).map_err(|e| SyncError::io(&done, e))?;
    Ok(done)
}

fn remove(path: &Path) -> Result<(), SyncError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SyncError::io(path, e)),
    }
}

/// Appends the missing bytes of `url` to `part` (starting over when the server ignores the
/// Range), then syncs it. Leaves a short `part` behind on error, for the next try.
async fn download(
    client: &reqwest::Client,
    url: &str,
    part: &Path,
    want: &Wanted<'_>,
    reporter: &mut Reporter<'_>,
) -> Result<(), SyncError> {
    let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > want.size {
        remove(part)?;
        have = 0;
    }
    if have == want.size {
        return Ok(());
    }
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| SyncError::Download(format!("{url}: {e}")))?;
    let status = resp.status();
    let append = match status.as_u16() {
        206 if have > 0 => {
            let range = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !range.starts_with(&format!("bytes {have}-")) {
                return Err(SyncError::Download(format!(
                    "{url}: asked for bytes {have}- and got {range:?}"
                )));
            }
            tracing::info!(%url, resumed_at = have, "sync download resumed");
            true
        }
        200 => false,
        _ => return Err(SyncError::Download(format!("{url}: HTTP {status}"))),
    };
    if !append {
        have = 0;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .await
        .map_err(|e| SyncError::io(part, e))?;
    reporter.downloading(want.name, have, want.size).await;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| SyncError::Download(format!("{url}: {e}")))?
    {
        have += chunk.len() as u64;
        if have > want.size {
            return Err(SyncError::Download(format!(
                "{url}: more than the {} bytes the upstream announced",
                want.size
            )));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| SyncError::io(part, e))?;
        reporter.downloading(want.name, have, want.size).await;
    }
    file.sync_all().await.map_err(|e| SyncError::io(part, e))?;
    if have != want.size {
        return Err(SyncError::Download(format!(
            "{url}: the connection ended after {have} of {} bytes",
            want.size
        )));
    }
    Ok(())
}

/// Size, SHA-256 and (when the upstream gave it) SHA-1 of a complete file.
async fn check(path: &Path, want: &Wanted<'_>) -> Result<(), SyncError> {
    let p = path.to_owned();
    let (size, sha1, sha256) = tokio::task::spawn_blocking(move || hash(&p))
        .await
        .map_err(|e| SyncError::io(path, std::io::Error::other(e)))??;
    let mismatch = |what: &str| {
        Err(SyncError::Mismatch(format!(
            "{}: {what} differs from what the upstream announced",
            want.name
        )))
    };
    if size != want.size {
        return mismatch("size");
    }
    if sha256 != want.sha256 {
        return mismatch("SHA-256");
    }
    if want.sha1.is_some_and(|s| s != sha1) {
        return mismatch("SHA-1");
    }
    Ok(())
}

fn hash(path: &Path) -> Result<(u64, [u8; 20], [u8; 32]), SyncError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| SyncError::io(path, e))?;
    let (mut s1, mut s256) = (Sha1::new(), Sha256::new());
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| SyncError::io(path, e))?;
        if n == 0 {
            break;
        }
        s1.update(&buf[..n]);
        s256.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, s1.finalize().into(), s256.finalize().into()))
}
