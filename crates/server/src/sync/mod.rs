//! The upstream syncer: mirrors chosen channels of another Omaha server (Flatcar's public
//! one, or another fastpatch-server) into this one, as Nebraska's syncer does.
//!
//! For each channel and architecture it asks the upstream what a stock machine running the
//! local channel's version would get, and walks on until the upstream has nothing newer
//! (each answer before the last is a floor there, and becomes one here). Each version is
//! downloaded into `<data-dir>/sync-work/` with resume ([`fetch`]), checked against the
//! sizes and hashes of the answer and, with keys, the payloads' signatures; only then is it
//! hosted (or registered at the upstream's URLs) and the local channel moved. A bad or
//! partial download is never published; an interrupted one resumes on the next run; a run
//! with nothing new changes nothing. Every step is in the activity feed, and where it is in
//! `upstream_sync` (dashboard, `GET /api/v1/apps/{app}/sync`).

mod background;
mod progress;
pub mod upstream;

pub use background::run;
pub use progress::{human_bytes, Reporter};

use std::path::{Path, PathBuf};
use std::time::Duration;

use rsa::RsaPublicKey;
use tracing::{info, warn};

use crate::store::{
    Activity, ActivityKind, ExternalPackage, ExtraFile, Store, StoreError, SyncState,
};
use fastpatch_omaha::OfferedFile;
use upstream::Answer;

/// At most this many versions are walked in one run of one channel (floors, then the target).
pub const MAX_WALK: usize = 8;

/// What to mirror, and how.
#[derive(Clone)]
pub struct SyncSettings {
    /// The application to mirror (the same id upstream and here).
    pub app: String,
    /// The upstream Omaha endpoint, e.g. `https://public.update.flatcar-linux.net/v1/update/`.
    pub upstream: String,
    /// Upstream channels (its group tracks) to mirror into the local channels of the same name.
    pub channels: Vec<String>,
    /// Architectures as the server stores them (`amd64`, `arm64`).
    pub arches: Vec<String>,
    /// Payloads and extra files must carry a signature by one of these; empty: not checked.
    pub keys: Vec<RsaPublicKey>,
    /// Register the packages at the upstream's URLs instead of hosting the files here.
    pub register_upstream_urls: bool,
    /// How often the background sync runs (`serve --sync-upstream`).
    pub every: Duration,
    /// Print download progress lines on stderr (the one-shot command).
    pub progress_on_terminal: bool,
}

impl std::fmt::Debug for SyncSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncSettings")
            .field("app", &self.app)
            .field("upstream", &self.upstream)
            .field("channels", &self.channels)
            .field("arches", &self.arches)
            .field("keys", &self.keys.len())
            .field("register_upstream_urls", &self.register_upstream_urls)
            .field("every", &self.every)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("asking the upstream server: {0}")]
    UpstreamRequest(String),
    #[error("the upstream's answer is not usable: {0}")]
    UpstreamAnswer(String),
    #[error("{0}; nothing was published")]
    Fetch(#[from] fastpatch_fetch::FetchError),
    #[error("{file}: {error}; the file was removed and nothing was published")]
    Signature { file: String, error: String },
    #[error("version {version} ({arch}) is already published here with other contents; the upstream's is not taken")]
    Differs { version: String, arch: String },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("publishing: {0}")]
    Publish(#[from] crate::payloads::PublishError),
}

impl SyncError {
    fn io(path: &Path, error: std::io::Error) -> SyncError {
        SyncError::Io {
            path: path.to_owned(),
            error,
        }
    }
}

/// What one run did for one channel and architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelReport {
    pub channel: String,
    pub arch: String,
    /// Versions newly mirrored in this run, oldest first.
    pub synced: Vec<String>,
    /// The version the upstream offers (the last of the walk), when it offered one.
    pub upstream_version: Option<String>,
    /// Set when the upstream held the update back.
    pub held: Option<String>,
}

/// The shared pieces of one run.
pub struct Syncer<'a> {
    pub store: &'a Store,
    pub data_dir: &'a Path,
    pub app: &'a str,
    pub settings: &'a SyncSettings,
    pub client: reqwest::Client,
    /// This server's machine id towards the upstream, for this run.
    pub machine_id: String,
    pub now: &'a (dyn Fn() -> i64 + Send + Sync),
}

/// The HTTP client of the syncer (rustls with the ring provider, as the engine's).
pub fn http_client() -> Result<reqwest::Client, SyncError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    fastpatch_fetch::client::with_system_roots("upstream sync", || {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("fastpatch-server-sync/", env!("CARGO_PKG_VERSION")))
    })
    .map_err(|e| SyncError::UpstreamRequest(e.to_string()))
}

pub fn work_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("sync-work")
}

/// Where one version's files are downloaded (and partial downloads wait to be resumed).
pub fn version_dir(data_dir: &Path, app: &str, version: &str, arch: &str) -> PathBuf {
    work_dir(data_dir).join(format!(
        "{}-{}-{}",
        sanitize(app.get(..8).unwrap_or(app)),
        sanitize(version),
        sanitize(arch)
    ))
}

impl Syncer<'_> {
    /// Mirrors every configured channel and architecture once; one failing does not stop
    /// the others (their errors are returned after all ran).
    pub async fn run_once(&self) -> (Vec<ChannelReport>, Vec<(String, SyncError)>) {
        let mut reports = Vec::new();
        let mut errors = Vec::new();
        for channel in &self.settings.channels {
            let mut offered = Vec::new();
            for arch in &self.settings.arches {
                match self.sync_channel(channel, arch).await {
                    Ok(r) => {
                        offered.push(r.upstream_version.clone());
                        reports.push(r);
                    }
                    Err(e) => {
                        offered.push(None);
                        errors.push((format!("{channel} ({arch})"), e));
                    }
                }
            }
            if let Err(e) = self.move_channel(channel, &offered).await {
                errors.push((channel.clone(), e));
            }
        }
        (reports, errors)
    }

    fn reporter<'b>(&'b self, channel: &'b str, arch: &'b str) -> Reporter<'b> {
        Reporter {
            store: self.store,
            app: self.app,
            channel,
            arch,
            version: None,
            terminal: self.settings.progress_on_terminal,
            last: None,
            now: self.now,
            base: 0,
            total: 0,
            pending: None,
        }
    }

    /// Walks the upstream's answers for one channel and architecture, mirroring each version.
    pub async fn sync_channel(
        &self,
        channel: &str,
        arch: &str,
    ) -> Result<ChannelReport, SyncError> {
        let mut rep = self.reporter(channel, arch);
        let result = self.walk(channel, arch, &mut rep).await;
        match &result {
            Ok(r) if r.held.is_some() => {
                let held = r.held.clone().unwrap_or_default();
                rep.state(
                    SyncState::Held,
                    format!("the upstream holds the update back ({held}); the next run asks again"),
                    0,
                    0,
                )
                .await;
            }
            Ok(r) => {
                rep.version = r.upstream_version.clone().or(rep.version.take());
                let msg = match r.synced.len() {
                    0 => "nothing new upstream".to_owned(),
                    _ => format!("mirrored {}", r.synced.join(", ")),
                };
                rep.state(SyncState::UpToDate, msg, 0, 0).await;
            }
            Err(e) => {
                rep.state(SyncState::Failed, e.to_string(), 0, 0).await;
                self.activity(
                    ActivityKind::SyncFailed,
                    rep.version.as_deref(),
                    &format!("sync of {channel} ({arch}) from the upstream failed: {e}"),
                )
                .await;
            }
        }
        result
    }

    async fn walk(
        &self,
        channel: &str,
        arch: &str,
        rep: &mut Reporter<'_>,
    ) -> Result<ChannelReport, SyncError> {
        let local = self.store.channel(self.app, channel).await?;
        let mut current = local
            .and_then(|c| c.version)
            .unwrap_or_else(|| "0.0.0".to_owned());
        let mut report = ChannelReport {
            channel: channel.to_owned(),
            arch: arch.to_owned(),
            synced: Vec::new(),
            upstream_version: None,
            held: None,
        };
        let mut walked = Vec::new();
        for _ in 0..MAX_WALK {
            rep.version = Some(current.clone());
            rep.state(
                SyncState::Checking,
                format!("asking the upstream as a machine on {current}"),
                0,
                0,
            )
            .await;
            match self.ask(channel, arch, &current).await? {
                Answer::NoUpdate => break,
                Answer::Held(status) => {
                    report.held = Some(status);
                    break;
                }
                Answer::Update { offer, codebases } => {
                    if offer.version == current || walked.contains(&offer.version) {
                        break;
                    }
                    rep.version = Some(offer.version.clone());
                    if self
                        .mirror(arch, &offer, &offer.extra_files, &codebases, rep)
                        .await?
                    {
                        report.synced.push(offer.version.clone());
                    }
                    current = offer.version.clone();
                    walked.push(offer.version);
                }
            }
        }
        // Every version the upstream gave before its last answer is a floor there: machines
        // must pass through it. Keep them so here too.
        if let Some((_, floors)) = walked.split_last() {
            let known = self.store.floors(self.app).await?;
            for f in floors.iter().filter(|f| !known.contains(f)) {
                let why = format!("a floor upstream on {channel}");
                self.store
                    .add_floor(self.app, f, &why, (self.now)())
                    .await?;
                info!(floor = %f, channel, "a floor upstream: machines here pass through it too");
            }
        }
        report.upstream_version = walked.last().cloned();
        Ok(report)
    }

    async fn ask(&self, channel: &str, arch: &str, version: &str) -> Result<Answer, SyncError> {
        let body = upstream::request(self.app, channel, arch, version, &self.machine_id).to_xml();
        let resp = self
            .client
            .post(&self.settings.upstream)
            .header(reqwest::header::CONTENT_TYPE, "text/xml")
            .body(body)
            .send()
            .await
            .map_err(|e| SyncError::UpstreamRequest(format!("{}: {e}", self.settings.upstream)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| SyncError::UpstreamRequest(format!("{}: {e}", self.settings.upstream)))?;
        if !status.is_success() {
            return Err(SyncError::UpstreamRequest(format!(
                "{}: HTTP {status}",
                self.settings.upstream
            )));
        }
        upstream::interpret(self.app, &bytes)
    }

    /// Makes `offer` available here; `false` when it already was.
    async fn mirror(
        &self,
        arch: &str,
        offer: &fastpatch_omaha::UpdateOffer,
        files: &[OfferedFile],
        codebases: &[String],
        rep: &mut Reporter<'_>,
    ) -> Result<bool, SyncError> {
        let sha256_b64 = fastpatch_omaha::encode_b64(&offer.sha256);
        if let Some(existing) = self
            .store
            .find_package(self.app, &offer.version, arch)
            .await?
        {
            let variants = self.store.variants(self.app).await?;
            let same = existing.sha256_b64 == sha256_b64
                || variants
                    .iter()
                    .any(|v| v.package_id == existing.id && v.sha256_b64 == sha256_b64);
            if same {
                return Ok(false);
            }
            return Err(SyncError::Differs {
                version: offer.version.clone(),
                arch: arch.to_owned(),
            });
        }
        let total: u64 = offer.size + files.iter().map(|f| f.size).sum::<u64>();
        self.activity(
            ActivityKind::SyncFound,
            Some(&offer.version),
            &format!(
                "the upstream offers {} ({arch}): {} file(s), {}",
                offer.version,
                1 + files.len(),
                human_bytes(total)
            ),
        )
        .await;
        let dir = version_dir(self.data_dir, self.app, &offer.version, arch);
        std::fs::create_dir_all(&dir).map_err(|e| SyncError::io(&dir, e))?;
        rep.total = total;
        rep.base = 0;
        let payload = fastpatch_fetch::fetch(
            &self.client,
            &dir,
            &fastpatch_fetch::Wanted {
                name: &offer.package_name,
                size: offer.size,
                sha256: offer.sha256,
                sha1: offer.sha1,
                urls: &offer.urls,
            },
            rep,
        )
        .await?;
        let mut extra = Vec::with_capacity(files.len());
        rep.base = offer.size;
        for f in files {
            extra.push(
                fastpatch_fetch::fetch(
                    &self.client,
                    &dir,
                    &fastpatch_fetch::Wanted {
                        name: &f.name,
                        size: f.size,
                        sha256: f.sha256,
                        sha1: f.sha1,
                        urls: &codebases
                            .iter()
                            .map(|c| format!("{c}{}", f.name))
                            .collect::<Vec<_>>(),
                    },
                    rep,
                )
                .await?,
            );
            rep.base += f.size;
        }
        if !self.settings.keys.is_empty() {
            rep.state(
                SyncState::Verifying,
                "checking signatures".into(),
                total as i64,
                total as i64,
            )
            .await;
            for path in std::iter::once(&payload).chain(&extra) {
                if let Err(error) = verify_signature(path, &self.settings.keys).await {
                    let _ = std::fs::remove_file(path);
                    return Err(SyncError::Signature {
                        file: file_name(path),
                        error,
                    });
                }
            }
        }
        rep.state(
            SyncState::Publishing,
            "publishing".into(),
            total as i64,
            total as i64,
        )
        .await;
        let how = self
            .publish(arch, offer, files, codebases, &payload, &extra)
            .await?;
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            warn!(dir = %dir.display(), error = %e, "could not remove the sync work directory");
        }
        self.activity(
            ActivityKind::SyncPublished,
            Some(&offer.version),
            &format!(
                "mirrored {} ({arch}) from the upstream: {how}",
                offer.version
            ),
        )
        .await;
        Ok(true)
    }

    async fn publish(
        &self,
        arch: &str,
        offer: &fastpatch_omaha::UpdateOffer,
        files: &[OfferedFile],
        codebases: &[String],
        payload: &Path,
        extra: &[PathBuf],
    ) -> Result<String, SyncError> {
        let now = (self.now)();
        if self.settings.register_upstream_urls {
            let ops = crate::variants::inspect(payload)
                .await?
                .map(|i| i.ops.to_string());
            let mut extra_files = Vec::with_capacity(files.len());
            for (f, path) in files.iter().zip(extra) {
                extra_files.push(ExtraFile {
                    name: f.name.clone(),
                    size: f.size,
                    sha1: sha1_b64(f.sha1, path).await?,
                    sha256: fastpatch_omaha::encode_b64(&f.sha256),
                });
            }
            let ext = ExternalPackage {
                version: offer.version.clone(),
                arch: Some(arch.to_owned()),
                url: codebases.first().cloned().unwrap_or_default(),
                file_name: Some(offer.package_name.clone()),
                size: offer.size,
                sha1: sha1_b64(offer.sha1, payload).await?,
                sha256: fastpatch_omaha::encode_b64(&offer.sha256),
                extra_files,
                payload_ops: ops,
            };
            self.store.register_external(self.app, &ext, now).await?;
            return Ok(format!("registered at {}", ext.url));
        }
        crate::payloads::publish_with_files(
            self.store,
            self.data_dir,
            &crate::payloads::Publish {
                app_id: self.app,
                version: &offer.version,
                arch,
                file: payload,
                file_name: Some(&offer.package_name),
                base_url: None,
            },
            extra,
            now,
        )
        .await?;
        Ok(format!("hosted here, {} file(s)", 1 + extra.len()))
    }

    /// Points the local channel at the version every architecture's upstream answer ended
    /// on, once each has its package here.
    async fn move_channel(
        &self,
        channel: &str,
        offered: &[Option<String>],
    ) -> Result<(), SyncError> {
        let Some(Some(version)) = offered.first() else {
            return Ok(());
        };
        if offered.iter().any(|v| v.as_ref() != Some(version)) {
            warn!(
                channel,
                ?offered,
                "the upstream offers other versions per architecture; the channel stays"
            );
            return Ok(());
        }
        let current = self
            .store
            .channel(self.app, channel)
            .await?
            .and_then(|c| c.version);
        if current.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        self.store
            .set_channel(self.app, channel, version, (self.now)())
            .await?;
        info!(channel, %version, "channel moved to the upstream's version");
        Ok(())
    }

    async fn activity(&self, kind: ActivityKind, version: Option<&str>, message: &str) {
        info!(kind = kind.as_str(), "{message}");
        let entry = Activity::app(self.app, kind, version, message, (self.now)());
        if let Err(e) = self.store.add_activity(&entry).await {
            warn!(error = %e, "could not write a sync activity entry");
        }
    }
}

/// The SHA-1 (base64) the upstream announced, or, when it gave none, that of the verified
/// file downloaded here (a registered package needs one).
async fn sha1_b64(announced: Option<[u8; 20]>, file: &Path) -> Result<String, SyncError> {
    if let Some(s) = announced {
        return Ok(fastpatch_omaha::encode_b64(&s));
    }
    let p = file.to_owned();
    let (_, sha1, _) =
        tokio::task::spawn_blocking(move || crate::payloads::hash_and_copy(&p, None))
            .await
            .map_err(|e| SyncError::io(file, std::io::Error::other(e)))??;
    Ok(fastpatch_omaha::encode_b64(&sha1))
}

async fn verify_signature(path: &Path, keys: &[RsaPublicKey]) -> Result<(), String> {
    let p = path.to_owned();
    let keys = keys.to_vec();
    tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&p).map_err(|e| e.to_string())?;
        fastpatch_payload::verify::verify(std::io::BufReader::new(f), &keys)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
