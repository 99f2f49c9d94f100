//! Download and install one offer: each URL in order (UrlRotation), resuming with HTTP Range,
//! the payload pushed into the payload crate's streaming installer as it arrives; size and the
//! Omaha SHA-256 checked over every byte before the install may finish.
//!
//! Each transfer is a stack of stages: ranged fetch ([`ranged_fetch`]: `Range` from the
//! current offset) → skip what a server that ignored Range sent again → rate limit → Omaha
//! hash (with saved states) → resume skip (bytes an earlier attempt installed feed only the
//! hash) → the installer. Errors are typed: [`TransferError`] per transfer, an [`ErrorCode`]
//! for the attempt.
//!
//! Two tasks: an async downloader and a blocking installer task that owns the
//! [`Installer`] (it hashes, decompresses and writes on its own threads). The installer keeps
//! its own resume checkpoints; the downloader keeps the running Omaha SHA-256 at
//! `hash_point_every` boundaries (default [`HASH_POINT_EVERY`]) so a resumed install can finish
//! the whole-payload hash by re-fetching at most that many bytes before the installer's resume
//! offset.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fastpatch_boot_control::SlotExtent;
use fastpatch_payload::install::{FileRange, InstallOptions, Installer};
use fastpatch_payload::ratelimit::TokenBucket;
use fastpatch_payload::{PayloadError, ResumableSha256};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::machine::{Input, UpdateOffer};
use crate::report::ErrorCode;
use crate::urls::UrlRotation;

/// Default distance between saved Omaha-hash states, in payload bytes.
pub const HASH_POINT_EVERY: u64 = 16 << 20;
const HASH_FILE: &str = "omaha-sha256.json";

/// Everything one install needs.
pub struct InstallSpec {
    pub offer: UpdateOffer,
    pub max_failures_per_url: u32,
    /// The passive slot, as the boot control handed it out (`writable_target`).
    pub target: SlotExtent,
    /// Trusted keys, disk rate limit (payload crate options); state dir and payload id are
    /// filled in here.
    pub install: InstallOptions,
    pub state_dir: PathBuf,
    pub net_rate: Option<u64>,
    /// Distance between saved Omaha-hash states (> 0).
    pub hash_point_every: u64,
    pub retry_delay: Duration,
    pub credentials: Option<(String, String)>,
}

/// What the installer task is told.
enum Feed {
    Data(Vec<u8>),
    /// Every byte arrived and matched size and SHA-256.
    End,
}

/// The running install, as the daemon loop sees it.
pub struct InstallHandle {
    finish: Option<oneshot::Sender<()>>,
    download: tokio::task::JoinHandle<()>,
    resumed: Arc<AtomicBool>,
}

impl InstallHandle {
    /// This attempt continues an interrupted one (update_engine's "resumed" error flag).
    pub fn resumed(&self) -> bool {
        self.resumed.load(Ordering::Relaxed)
    }

    /// FinishInstall: let the installer verify (signature, read-back) and report.
    pub fn finish(&mut self) {
        if let Some(tx) = self.finish.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for InstallHandle {
    fn drop(&mut self) {
        // Stops the download; the installer task sees its feed end and drops the install
        // (its checkpoint stays for a later resume).
        self.download.abort();
    }
}

/// Maps an installer error to update_engine's error code.
pub fn error_code(e: &PayloadError) -> ErrorCode {
    match e {
        PayloadError::OperationHashMismatch { .. } => ErrorCode::PAYLOAD_HASH_MISMATCH,
        PayloadError::Truncated { .. } | PayloadError::TrailingData { .. } => {
            ErrorCode::PAYLOAD_SIZE_MISMATCH
        }
        PayloadError::BadSignature { .. }
        | PayloadError::BadSignatureBlock(_)
        | PayloadError::Unsigned
        | PayloadError::NoTrustedKeys
        | PayloadError::NoKeysFound(_)
        | PayloadError::BadMagic(_)
        | PayloadError::UnsupportedVersion(_)
        | PayloadError::ManifestTooLarge(_)
        | PayloadError::ManifestDecode(_)
        | PayloadError::InvalidManifest(_)
        | PayloadError::InvalidOperation { .. }
        | PayloadError::UnsupportedOperation { .. }
        | PayloadError::Decompress { .. }
        | PayloadError::ExtentOutOfRange { .. }
        | PayloadError::PayloadTooLarge { .. } => ErrorCode::DOWNLOAD_PAYLOAD_VERIFICATION_ERROR,
        PayloadError::PartitionMismatch(_) | PayloadError::ReadbackMismatch(_) => {
            ErrorCode::DOWNLOAD_NEW_PARTITION_INFO_ERROR
        }
        PayloadError::Io { .. } | PayloadError::Target(_) => ErrorCode::DOWNLOAD_WRITE_ERROR,
        PayloadError::DeltaNeedsSource { .. }
        | PayloadError::SourceMismatch { .. }
        | PayloadError::SourceHashMismatch { .. } => ErrorCode::DOWNLOAD_STATE_INITIALIZATION_ERROR,
        PayloadError::BootControl(_) | PayloadError::Disk(_) => {
            ErrorCode::INSTALL_DEVICE_OPEN_ERROR
        }
        _ => ErrorCode::ERROR,
    }
}

/// Saved Omaha-hash states of one payload.
#[derive(Debug, Default, Serialize, Deserialize)]
struct HashPoints {
    payload_id: String,
    points: Vec<ResumableSha256>,
}

fn load_points(dir: &Path, payload_id: &str) -> HashPoints {
    let fresh = HashPoints {
        payload_id: payload_id.to_string(),
        points: vec![ResumableSha256::new()],
    };
    match std::fs::read(dir.join(HASH_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<HashPoints>(&b).ok())
    {
        Some(p) if p.payload_id == payload_id && !p.points.is_empty() => p,
        _ => fresh,
    }
}

/// Replaces the hash-state file atomically and durably: tmp + fsync + rename + directory
/// fsync (and the parent's, the first time the directory is created).
fn save_points(dir: &Path, points: &HashPoints) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(points).map_err(std::io::Error::other)?;
    fastpatch_durable::create_dir(dir)
        .and_then(|()| fastpatch_durable::replace(&dir.join(HASH_FILE), &bytes))
        .map_err(std::io::Error::other)
}

/// Forgets every checkpoint (after a payload proved bad, so no later attempt resumes it).
pub fn discard_state(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove install state");
        }
    }
}

/// Starts downloading and installing. Results come back through `report` as inputs:
/// DownloadProgress, DownloadFinished, then (after [`InstallHandle::finish`]) InstallVerified
/// or Failed. Bytes received go to `on_bytes` (metrics).
pub fn spawn(
    spec: InstallSpec,
    http: reqwest::Client,
    report: mpsc::UnboundedSender<Input>,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
) -> InstallHandle {
    let (feed_tx, feed_rx) = mpsc::channel::<Feed>(4);
    let (ready_tx, ready_rx) = oneshot::channel::<u64>();
    let (finish_tx, finish_rx) = oneshot::channel::<()>();
    let mut opts = spec.install.clone();
    opts.state_dir = Some(spec.state_dir.clone());
    opts.payload_id = Some(fastpatch_omaha::encode_b64(&spec.offer.sha256));
    let target = spec.target.clone();
    let installer_report = report.clone();
    let resumed = Arc::new(AtomicBool::new(false));
    let resumed2 = resumed.clone();
    tokio::task::spawn_blocking(move || {
        installer_task(target, opts, ready_tx, feed_rx, finish_rx, installer_report)
    });
    let download = tokio::spawn(async move {
        let Ok(resume_at) = ready_rx.await else {
            return; // the installer could not start; it reported why
        };
        resumed2.store(resume_at > 0, Ordering::Relaxed);
        if let Err(code) = download(&spec, &http, resume_at, &feed_tx, &report, &*on_bytes).await {
            let _ = report.send(Input::Failed { code });
        }
    });
    InstallHandle {
        finish: Some(finish_tx),
        download,
        resumed,
    }
}

fn installer_task(
    target: SlotExtent,
    opts: InstallOptions,
    ready: oneshot::Sender<u64>,
    mut feed: mpsc::Receiver<Feed>,
    finish: oneshot::Receiver<()>,
    report: mpsc::UnboundedSender<Input>,
) {
    let fail = |e: PayloadError| {
        tracing::error!(error = %e, "payload install failed");
        let _ = report.send(Input::Failed {
            code: error_code(&e),
        });
    };
    let mut installer = match FileRange::open(&target.device, target.offset, target.len)
        .and_then(|t| Installer::new(Arc::new(t), opts))
    {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    let _ = ready.send(installer.resume_offset());
    loop {
        match feed.blocking_recv() {
            Some(Feed::Data(chunk)) => {
                if let Err(e) = installer.feed(&chunk) {
                    return fail(e);
                }
            }
            Some(Feed::End) => break,
            None => return, // download abandoned; the checkpoint stays
        }
    }
    if finish.blocking_recv().is_err() {
        return;
    }
    match installer.finish() {
        Ok(r) => {
            tracing::info!(
                payload_len = r.payload_len,
                resumed_from = r.resumed_from,
                "payload installed and verified"
            );
            let _ = report.send(Input::InstallVerified);
        }
        Err(e) => fail(e),
    }
}

/// Why one transfer from one URL stopped before the payload's end.
#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("server sent range {got:?}, asked for {offset}-")]
    Range { got: String, offset: u64 },
    /// The only error no other URL can mend: the payload is not the one announced.
    #[error("payload longer than the {size} bytes announced")]
    TooLong { size: u64 },
}

/// What has arrived so far, across transfers and URLs.
struct Received {
    /// The Omaha SHA-256 over bytes 0..offset, and its saved states.
    hasher: ResumableSha256,
    points: HashPoints,
    offset: u64,
    last_progress: u64,
    bucket: Option<TokenBucket>,
}

/// Where the download's bytes go: the installer, the status, the metrics.
struct Sinks<'a> {
    feed: &'a mpsc::Sender<Feed>,
    report: &'a mpsc::UnboundedSender<Input>,
    on_bytes: &'a (dyn Fn(u64) + Send + Sync),
}

async fn download(
    spec: &InstallSpec,
    http: &reqwest::Client,
    resume_at: u64,
    feed: &mpsc::Sender<Feed>,
    report: &mpsc::UnboundedSender<Input>,
    on_bytes: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), ErrorCode> {
    let size = spec.offer.size;
    // The payload's identity in the saved hash states (base64 of its SHA-256).
    let payload_id = &fastpatch_omaha::encode_b64(&spec.offer.sha256);
    let mut rx = resume_point(spec, payload_id, resume_at);
    let sinks = Sinks {
        feed,
        report,
        on_bytes,
    };
    let mut rotation = UrlRotation::new(spec.offer.urls.clone(), spec.max_failures_per_url);
    while rx.offset < size {
        let Some(url) = rotation.current().map(str::to_string) else {
            tracing::error!("every payload URL failed");
            return Err(ErrorCode::DOWNLOAD_TRANSFER_ERROR);
        };
        let result = transfer(spec, http, &url, resume_at, &mut rx, &sinks).await;
        if feed.is_closed() {
            // The installer stopped on an error it reports itself.
            return Ok(());
        }
        match result {
            Ok(()) if rx.offset >= size => break,
            Ok(()) => tracing::warn!(
                url,
                offset = rx.offset,
                size,
                "transfer ended early; resuming"
            ),
            Err(why @ TransferError::TooLong { .. }) => {
                tracing::error!(url, "{why}");
                discard_state(&spec.state_dir);
                return Err(ErrorCode::PAYLOAD_SIZE_MISMATCH);
            }
            Err(why) => tracing::warn!(url, offset = rx.offset, "payload transfer failed: {why}"),
        }
        rotation.record_failure();
        if rotation.current().is_some() {
            tokio::time::sleep(spec.retry_delay).await;
        }
    }
    let got: [u8; 32] = rx.hasher.finalize();
    if got != spec.offer.sha256 {
        let got = fastpatch_omaha::encode_b64(&got);
        tracing::error!(got, want = %payload_id, "payload SHA-256 does not match the Omaha response");
        discard_state(&spec.state_dir);
        return Err(ErrorCode::PAYLOAD_HASH_MISMATCH);
    }
    if feed.send(Feed::End).await.is_err() {
        return Ok(());
    }
    let _ = report.send(Input::DownloadProgress { received: size });
    let _ = report.send(Input::DownloadFinished);
    Ok(())
}

/// Where the download starts: the latest saved hash state at or before the installer's resume
/// offset (bytes between them are fetched again, for the hash only).
fn resume_point(spec: &InstallSpec, payload_id: &str, resume_at: u64) -> Received {
    let mut points = load_points(&spec.state_dir, payload_id);
    points.points.retain(|p| p.bytes_hashed() <= resume_at);
    let hasher = points.points.last().cloned().unwrap_or_default();
    if points.points.is_empty() {
        points.points.push(ResumableSha256::new());
    }
    let offset = hasher.bytes_hashed();
    if resume_at > 0 {
        tracing::info!(
            resume_at,
            hash_from = offset,
            "resuming the payload download"
        );
    }
    Received {
        hasher,
        points,
        offset,
        last_progress: 0,
        bucket: spec.net_rate.map(TokenBucket::new),
    }
}

/// One request to `url` from `rx.offset`, its body pushed through the stages until it ends.
/// `Ok` also when the installer stopped taking bytes (it reports why itself).
async fn transfer(
    spec: &InstallSpec,
    http: &reqwest::Client,
    url: &str,
    resume_at: u64,
    rx: &mut Received,
    sinks: &Sinks<'_>,
) -> Result<(), TransferError> {
    let (mut resp, mut resent) = ranged_fetch(spec, http, url, rx.offset).await?;
    while let Some(chunk) = resp.chunk().await? {
        // Drop what a server that ignored Range sent again.
        let n = resent.min(chunk.len() as u64) as usize;
        resent -= n as u64;
        let data = &chunk[n..];
        if data.is_empty() {
            continue;
        }
        if rx.offset + data.len() as u64 > spec.offer.size {
            return Err(TransferError::TooLong {
                size: spec.offer.size,
            });
        }
        rx.throttle(data.len() as u64).await;
        rx.hash(data, spec);
        let fed = rx.feed_installer(data, resume_at, sinks).await;
        rx.offset += data.len() as u64;
        (sinks.on_bytes)(data.len() as u64);
        if !fed {
            return Ok(());
        }
        rx.report_progress(spec.offer.size, sinks);
    }
    Ok(())
}

/// The request from `offset` on (`Range`, credentials) and how many leading bytes of its body
/// were received before (a server that ignores Range answers 200 with the whole payload).
async fn ranged_fetch(
    spec: &InstallSpec,
    http: &reqwest::Client,
    url: &str,
    offset: u64,
) -> Result<(reqwest::Response, u64), TransferError> {
    let mut req = http.get(url);
    if offset > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
    }
    if let Some((user, pass)) = &spec.credentials {
        req = req.basic_auth(user, Some(pass));
    }
    let resp = req.send().await?;
    let resent = match resp.status() {
        reqwest::StatusCode::OK => offset,
        reqwest::StatusCode::PARTIAL_CONTENT => {
            let range = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !range.starts_with(&format!("bytes {offset}-")) {
                return Err(TransferError::Range {
                    got: range.to_string(),
                    offset,
                });
            }
            0
        }
        status => return Err(TransferError::Status(status)),
    };
    Ok((resp, resent))
}

/// The stages each received chunk passes, in order.
impl Received {
    /// The network rate limit (`limits.download_bytes_per_sec`).
    async fn throttle(&mut self, n: u64) {
        if let Some(b) = self.bucket.as_mut() {
            let wait = b.reserve(n);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// The Omaha SHA-256, with its state saved at every `hash_point_every` boundary.
    fn hash(&mut self, data: &[u8], spec: &InstallSpec) {
        hash_in(
            &mut self.hasher,
            &mut self.points,
            data,
            &spec.state_dir,
            spec.hash_point_every,
        );
    }

    /// Bytes at or past the installer's resume offset go to the installer; the ones before it
    /// were installed by an earlier attempt and only feed the hash. False when the installer
    /// stopped taking bytes.
    async fn feed_installer(&self, data: &[u8], resume_at: u64, sinks: &Sinks<'_>) -> bool {
        let from = resume_at.saturating_sub(self.offset).min(data.len() as u64) as usize;
        from == data.len()
            || sinks
                .feed
                .send(Feed::Data(data[from..].to_vec()))
                .await
                .is_ok()
    }

    /// DownloadProgress every 0.5 % of the payload, and at its end.
    fn report_progress(&mut self, size: u64, sinks: &Sinks<'_>) {
        if self.offset - self.last_progress >= size / 200 || self.offset == size {
            self.last_progress = self.offset;
            let _ = sinks.report.send(Input::DownloadProgress {
                received: self.offset,
            });
        }
    }
}

fn hash_in(
    hasher: &mut ResumableSha256,
    points: &mut HashPoints,
    data: &[u8],
    dir: &Path,
    every: u64,
) {
    let every = every.max(1);
    let mut data = data;
    while !data.is_empty() {
        let at = hasher.bytes_hashed();
        let to_boundary = every - at % every;
        let n = to_boundary.min(data.len() as u64) as usize;
        hasher.update(&data[..n]);
        data = &data[n..];
        if hasher.bytes_hashed().is_multiple_of(every) {
            points.points.push(hasher.clone());
            if let Err(e) = save_points(dir, points) {
                tracing::warn!(error = %e, "cannot save the download hash state");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_that_does_not_fit_the_booted_slot_has_its_own_code() {
        let mismatch = PayloadError::SourceMismatch {
            reason: "hash differs".into(),
        };
        assert_eq!(
            error_code(&mismatch),
            ErrorCode::DOWNLOAD_STATE_INITIALIZATION_ERROR
        );
        assert_eq!(
            error_code(&PayloadError::SourceHashMismatch { index: 3 }),
            ErrorCode::DOWNLOAD_STATE_INITIALIZATION_ERROR
        );
        assert_eq!(
            error_code(&PayloadError::OperationHashMismatch { index: 3 }),
            ErrorCode::PAYLOAD_HASH_MISMATCH
        );
    }
}
