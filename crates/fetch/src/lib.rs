//! Downloading one file into a directory: resumed with a Range request from what an earlier,
//! interrupted attempt left (`NAME.part`), tried at each URL in turn, synced, and renamed to
//! its name only once its size and hashes match. A file that does not match is removed (it
//! would never become right by resuming); a short one is kept for the next attempt.
//!
//! Used by the server's upstream syncer (payloads and extra files) and the engine (system
//! extensions).
//!
//! **Invariant:** `dir/NAME` exists only with the announced size and SHA-256 (and SHA-1 when
//! given); it is synced to disk before it takes that name.

pub mod client;

use std::path::{Path, PathBuf};

use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// What a file must be, and where it can be downloaded.
#[derive(Debug, Clone)]
pub struct Wanted<'a> {
    /// The file's name in the directory (a plain name; the caller checks it).
    pub name: &'a str,
    pub size: u64,
    pub sha256: [u8; 32],
    pub sha1: Option<[u8; 20]>,
    /// Full URLs to try in order.
    pub urls: &'a [String],
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("download failed: {0} (what arrived is kept and resumed next time)")]
    Download(String),
    #[error("{name}: {what} differs from what was announced; the file was removed")]
    Mismatch { name: String, what: &'static str },
    #[error("{name}: no URL to download it from")]
    NoUrl { name: String },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl FetchError {
    fn io(path: &Path, error: std::io::Error) -> FetchError {
        FetchError::Io {
            path: path.to_owned(),
            error,
        }
    }
}

/// Told how a download goes.
pub trait Progress {
    /// `done` of `size` bytes of `name` are on disk.
    fn bytes(&mut self, name: &str, done: u64, size: u64);
    /// Every byte arrived; the hashes are being checked.
    fn verifying(&mut self, _name: &str) {}
}

/// No progress reports.
pub struct Quiet;

impl Progress for Quiet {
    fn bytes(&mut self, _: &str, _: u64, _: u64) {}
}

/// The verified file `dir/NAME`, downloaded (or resumed) unless it is already there.
pub async fn fetch(
    client: &reqwest::Client,
    dir: &Path,
    want: &Wanted<'_>,
    progress: &mut (dyn Progress + Send),
) -> Result<PathBuf, FetchError> {
    let done = dir.join(want.name);
    if done.exists() {
        if check(&done, want).await.is_ok() {
            return Ok(done);
        }
        remove(&done)?;
    }
    if want.urls.is_empty() {
        return Err(FetchError::NoUrl {
            name: want.name.to_owned(),
        });
    }
    let part = dir.join(format!("{}.part", want.name));
    let mut last = None;
    for url in want.urls {
        match download(client, url, &part, want, progress).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => {
                tracing::warn!(%url, error = %e, "download failed");
                last = Some(e);
            }
        }
    }
    if let Some(e) = last {
        return Err(e);
    }
    progress.verifying(want.name);
    if let Err(e) = check(&part, want).await {
        remove(&part)?;
        return Err(e);
    }
    std::fs::rename(&part, &done).map_err(|e| FetchError::io(&done, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FetchError::io(dir, e))?;
    Ok(done)
}

fn remove(path: &Path) -> Result<(), FetchError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FetchError::io(path, e)),
    }
}

/// How the server answered a (ranged) GET.
fn resumes(status: u16, have: u64, content_range: &str, url: &str) -> Result<bool, FetchError> {
    match status {
        206 if have > 0 => {
            if content_range.starts_with(&format!("bytes {have}-")) {
                Ok(true)
            } else {
                Err(FetchError::Download(format!(
                    "{url}: asked for bytes {have}- and got {content_range:?}"
                )))
            }
        }
        200 => Ok(false),
        _ => Err(FetchError::Download(format!("{url}: HTTP {status}"))),
    }
}

/// Appends the missing bytes of `url` to `part` (starting over when the server ignores the
/// Range), then syncs it. Leaves a short `part` behind on error, for the next try.
async fn download(
    client: &reqwest::Client,
    url: &str,
    part: &Path,
    want: &Wanted<'_>,
    progress: &mut (dyn Progress + Send),
) -> Result<(), FetchError> {
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
        .map_err(|e| FetchError::Download(format!("{url}: {e}")))?;
    let content_range = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let append = resumes(resp.status().as_u16(), have, &content_range, url)?;
    if append {
        tracing::info!(%url, resumed_at = have, "download resumed");
    } else {
        have = 0;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .await
        .map_err(|e| FetchError::io(part, e))?;
    progress.bytes(want.name, have, want.size);
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| FetchError::Download(format!("{url}: {e}")))?
    {
        have += chunk.len() as u64;
        if have > want.size {
            return Err(FetchError::Download(format!(
                "{url}: more than the {} bytes announced",
                want.size
            )));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| FetchError::io(part, e))?;
        progress.bytes(want.name, have, want.size);
    }
    file.sync_all().await.map_err(|e| FetchError::io(part, e))?;
    if have != want.size {
        return Err(FetchError::Download(format!(
            "{url}: the connection ended after {have} of {} bytes",
            want.size
        )));
    }
    Ok(())
}

/// Size, SHA-256 and (when given) SHA-1 of a complete file.
async fn check(path: &Path, want: &Wanted<'_>) -> Result<(), FetchError> {
    let p = path.to_owned();
    let (size, sha1, sha256) = tokio::task::spawn_blocking(move || hash(&p))
        .await
        .map_err(|e| FetchError::io(path, std::io::Error::other(e)))??;
    let mismatch = |what| {
        Err(FetchError::Mismatch {
            name: want.name.to_owned(),
            what,
        })
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

fn hash(path: &Path) -> Result<(u64, [u8; 20], [u8; 32]), FetchError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| FetchError::io(path, e))?;
    let (mut s1, mut s256) = (Sha1::new(), Sha256::new());
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| FetchError::io(path, e))?;
        if n == 0 {
            break;
        }
        s1.update(&buf[..n]);
        s256.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, s1.finalize().into(), s256.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::resumes;

    #[test]
    fn a_range_answer_is_taken_only_when_it_starts_where_the_file_ends() {
        assert!(resumes(206, 10, "bytes 10-99/100", "u").unwrap());
        assert!(resumes(206, 10, "bytes 0-99/100", "u").is_err());
        assert!(
            !resumes(200, 10, "", "u").unwrap(),
            "a whole answer starts over"
        );
        assert!(resumes(404, 0, "", "u").is_err());
        assert!(
            resumes(206, 0, "bytes 0-9/10", "u").is_err(),
            "nothing was asked for"
        );
    }
}
