//! Making delta payloads in the background.
//!
//! The channels say which deltas are wanted ([`crate::store::deltas::plan`]): for every
//! channel's version, one from each of the previous N versions the channel offered. For
//! each, this module rebuilds both images from their hosted full payloads (each verified
//! against the server's signing key, so the server only ever describes payloads it can
//! vouch for), generates the delta with `fastpatch_payload::delta`, signs it with the
//! same key, hosts it next to the full payloads and records the outcome with an activity
//! entry. A delta not smaller than its full payload is recorded as such and never served.
//!
//! Generation runs on its own thread at a lower CPU priority, one delta at a time, in a
//! work directory under the data dir (`deltas-work/`, emptied at start: what a stopped
//! server left there is garbage). A stop does not wait for a delta in progress; the next
//! start makes it again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastpatch_payload::delta::{self, DeltaOptions};
use fastpatch_payload::install::{self, FileRange, InstallOptions, InstallTarget};
use fastpatch_payload::PayloadError;
use rsa::{RsaPrivateKey, RsaPublicKey};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::payloads::{hash_and_copy, payload_dir};
use crate::store::{Activity, ActivityKind, DeltaJob, DeltaRow, DeltaState};
use crate::AppState;

/// How the server makes deltas (`serve --delta-signing-key`).
#[derive(Debug, Clone)]
pub struct DeltaSettings {
    /// Signs the deltas. Full payloads must verify with its public half to be used.
    pub signing_key: PathBuf,
    /// Deltas from this many previous versions of each channel (0: none).
    pub per_channel: usize,
    /// How often the channels are looked at (publishing through the API also wakes it).
    pub scan_every: Duration,
    pub zstd_level: i32,
}

impl DeltaSettings {
    pub fn new(signing_key: PathBuf) -> DeltaSettings {
        DeltaSettings {
            signing_key,
            per_channel: 2,
            scan_every: Duration::from_secs(30),
            zstd_level: 19,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("rebuilding the {which} image from its payload: {error}")]
    Rebuild {
        which: &'static str,
        error: PayloadError,
    },
    #[error("generating the delta: {0}")]
    Generate(PayloadError),
    #[error("work directory {path}: {error}")]
    Work {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("hosting the delta: {0}")]
    Host(#[from] crate::payloads::PublishError),
    #[error("the generator thread ended without an answer")]
    Lost,
}

/// The key deltas are signed with, loaded once at start.
pub struct DeltaKey {
    private: RsaPrivateKey,
    public: RsaPublicKey,
}

impl DeltaKey {
    pub fn load(path: &Path) -> Result<DeltaKey, PayloadError> {
        let private = fastpatch_payload::keys::load_private_key(path)?;
        let public = RsaPublicKey::from(&private);
        Ok(DeltaKey { private, public })
    }
}

/// Where deltas are made; emptied when the worker starts.
pub fn work_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("deltas-work")
}

/// Makes wanted deltas until `stop` turns true: after every scan period and whenever
/// `state.delta_wake` is notified.
pub async fn run(
    state: Arc<AppState>,
    settings: DeltaSettings,
    key: Arc<DeltaKey>,
    mut stop: watch::Receiver<bool>,
) {
    let work = work_dir(&state.data_dir);
    if work.exists() {
        if let Err(e) = std::fs::remove_dir_all(&work) {
            warn!(dir = %work.display(), error = %e, "could not empty the delta work directory");
        }
    }
    info!(
        per_channel = settings.per_channel,
        "delta payloads on: from the previous {} versions of each channel", settings.per_channel
    );
    let mut scan = tokio::time::interval(settings.scan_every);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            _ = scan.tick() => {}
            _ = state.delta_wake.notified() => {}
        }
        let jobs = match state.store.wanted_deltas(settings.per_channel).await {
            Ok(jobs) => jobs,
            Err(e) => {
                warn!(error = %e, "could not list the deltas to make; next scan tries again");
                continue;
            }
        };
        for job in jobs {
            if *stop.borrow() {
                return;
            }
            if make(&state, &settings, &key, job, &mut stop)
                .await
                .is_none()
            {
                return;
            }
        }
    }
}

/// Makes one delta and records it; `None` when the server stopped first.
async fn make(
    state: &Arc<AppState>,
    settings: &DeltaSettings,
    key: &Arc<DeltaKey>,
    job: DeltaJob,
    stop: &mut watch::Receiver<bool>,
) -> Option<DeltaState> {
    let label = label(&job);
    info!(delta = %label, "making a delta payload");
    let now = state.clock.now().timestamp();
    let started = format!("making the delta {label}");
    let target = (&job.target.app_id, &job.target.version);
    if let Err(e) = state
        .store
        .add_activity(&Activity::app(
            target.0,
            ActivityKind::DeltaStarted,
            Some(target.1),
            &started,
            now,
        ))
        .await
    {
        warn!(error = %e, "could not write the activity entry");
    }
    let began = Instant::now();
    let result = generate_on_thread(state, settings, key, &job, stop).await?;
    let secs = began.elapsed().as_secs_f64();
    let (row, message) = outcome(&job, result, secs, state.clock.now().timestamp());
    match &row.state {
        DeltaState::Ready => info!(delta = %label, bytes = row.size, secs, "delta payload ready"),
        DeltaState::NotSmaller => {
            info!(delta = %label, "delta not smaller than the full payload; the full one is served")
        }
        DeltaState::Failed => {
            warn!(delta = %label, note = ?row.note, "making the delta failed; machines get the full payload")
        }
    }
    let unused = match state.store.add_delta(&row, &message).await {
        Ok(true) => false,
        Ok(false) => {
            info!(delta = %label, "another server process recorded this delta first; keeping its");
            true
        }
        Err(e) => {
            warn!(delta = %label, error = %e, "could not record the delta; the next scan makes it again");
            true
        }
    };
    if unused && row.state == DeltaState::Ready {
        let _ = std::fs::remove_file(payload_dir(&state.data_dir).join(&row.id));
    }
    Some(row.state)
}

fn label(job: &DeltaJob) -> String {
    format!(
        "{} → {} ({})",
        job.source.version, job.target.version, job.target.arch
    )
}

/// Runs [`build_and_host`] on its own niced thread; `None` when the server stopped first
/// (the thread is left to end with the process).
async fn generate_on_thread(
    state: &AppState,
    settings: &DeltaSettings,
    key: &Arc<DeltaKey>,
    job: &DeltaJob,
    stop: &mut watch::Receiver<bool>,
) -> Option<Result<Built, DeltaError>> {
    let (tx, rx) = oneshot::channel();
    let data_dir = state.data_dir.clone();
    let level = settings.zstd_level;
    let (key, job) = (key.clone(), job.clone());
    let spawned = std::thread::Builder::new()
        .name("delta".into())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(build_and_host(&data_dir, &key, &job, level));
        });
    match spawned {
        Ok(_) => tokio::select! {
            r = rx => Some(r.unwrap_or(Err(DeltaError::Lost))),
            _ = async { let _ = stop.wait_for(|s| *s).await; } => None,
        },
        Err(e) => Some(Err(DeltaError::Work {
            path: work_dir(&state.data_dir),
            error: e,
        })),
    }
}

/// The row and the activity message for how a delta's generation ended. Pure.
fn outcome(
    job: &DeltaJob,
    result: Result<Built, DeltaError>,
    secs: f64,
    now: i64,
) -> (DeltaRow, String) {
    let label = label(job);
    let full = job.target.size.max(0) as u64;
    let mut row = DeltaRow {
        id: uuid::Uuid::new_v4().simple().to_string(),
        app_id: job.target.app_id.clone(),
        package_id: job.target.id.clone(),
        version: job.target.version.clone(),
        arch: job.target.arch.clone(),
        source_version: job.source.version.clone(),
        source_package_id: job.source.id.clone(),
        state: DeltaState::Failed,
        file_name: String::new(),
        size: 0,
        sha1_b64: String::new(),
        sha256_b64: String::new(),
        note: None,
        served_bytes: 0,
        created_at: now,
    };
    let source = &job.source.version;
    let message = match result {
        Ok(Built::Hosted {
            id,
            file_name,
            size,
            sha1,
            sha256,
            operations,
        }) => {
            row.id = id;
            row.state = DeltaState::Ready;
            row.file_name = file_name;
            row.size = i64::try_from(size).unwrap_or(i64::MAX);
            row.sha1_b64 = fastpatch_omaha::encode_b64(&sha1);
            row.sha256_b64 = fastpatch_omaha::encode_b64(&sha256);
            format!(
                "delta {label} ready: {size} bytes, {:.1} % of the {full}-byte full payload ({operations} operations, made in {secs:.0} s)",
                100.0 * size as f64 / full.max(1) as f64,
            )
        }
        Ok(Built::NotSmaller { delta }) => {
            row.state = DeltaState::NotSmaller;
            row.note = Some(format!("{delta} bytes, full payload {full}"));
            format!("delta {label} not made: it would not be smaller than the {full}-byte full payload; machines on {source} get the full one")
        }
        Err(e) => {
            row.note = Some(e.to_string());
            format!("delta {label} failed: {e}; machines on {source} get the full payload")
        }
    };
    (row, message)
}

enum Built {
    Hosted {
        id: String,
        file_name: String,
        size: u64,
        sha1: [u8; 20],
        sha256: [u8; 32],
        operations: usize,
    },
    NotSmaller {
        delta: u64,
    },
}

/// Rebuilds both images, generates the delta and moves it under the payload directory
/// as `<new id>` (durable before the row that serves it is written). Blocking.
fn build_and_host(
    data_dir: &Path,
    key: &DeltaKey,
    job: &DeltaJob,
    zstd_level: i32,
) -> Result<Built, DeltaError> {
    let parent = work_dir(data_dir);
    let work_err = |error| DeltaError::Work {
        path: parent.clone(),
        error,
    };
    std::fs::create_dir_all(&parent).map_err(work_err)?;
    let work = tempfile::Builder::new()
        .prefix("delta-")
        .tempdir_in(&parent)
        .map_err(work_err)?;
    let payloads = payload_dir(data_dir);
    let old = work.path().join("source.img");
    let new = work.path().join("target.img");
    rebuild(&payloads.join(&job.source.id), &old, &key.public).map_err(|error| {
        DeltaError::Rebuild {
            which: "source",
            error,
        }
    })?;
    rebuild(&payloads.join(&job.target.id), &new, &key.public).map_err(|error| {
        DeltaError::Rebuild {
            which: "target",
            error,
        }
    })?;
    let out = work.path().join("delta.payload");
    let opts = DeltaOptions {
        zstd_level,
        source_version: Some(job.source.version.clone()),
        smaller_than: Some(job.target.size.max(0) as u64),
    };
    let mut last = (None, 0u64);
    let mut progress = |stage: delta::Stage, done: u64, total: u64| {
        let tenth = (done * 10).checked_div(total).unwrap_or(10);
        if last != (Some(stage), tenth) {
            last = (Some(stage), tenth);
            tracing::debug!(
                stage = stage.label(),
                percent = tenth * 10,
                "delta progress"
            );
        }
    };
    let report = match delta::generate_delta(
        &old,
        &new,
        std::slice::from_ref(&key.private),
        &out,
        &opts,
        &mut progress,
    ) {
        Ok(r) => r,
        Err(PayloadError::DeltaNotSmaller { delta, .. }) => {
            return Ok(Built::NotSmaller { delta });
        }
        Err(e) => return Err(DeltaError::Generate(e)),
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let incoming = payloads.join(format!(".incoming-{id}"));
    let (size, sha1, sha256) = hash_and_copy(&out, Some(&incoming))?;
    std::fs::rename(&incoming, payloads.join(&id)).map_err(|error| {
        let _ = std::fs::remove_file(&incoming);
        DeltaError::Work {
            path: payloads.clone(),
            error,
        }
    })?;
    Ok(Built::Hosted {
        id,
        file_name: delta_file_name(&job.source.version, &job.target.version),
        size,
        sha1,
        sha256,
        operations: report.operations,
    })
}

/// Writes the image a full payload builds into `image` (verified as an install is).
fn rebuild(payload: &Path, image: &Path, key: &RsaPublicKey) -> Result<(), PayloadError> {
    let open = |p: &Path| {
        std::fs::File::open(p).map_err(|error| PayloadError::Io {
            context: format!("opening {}", p.display()),
            error,
        })
    };
    let inspection = fastpatch_payload::verify::inspect(std::io::BufReader::new(open(payload)?))?;
    let file = std::fs::File::create(image).map_err(|error| PayloadError::Io {
        context: format!("creating {}", image.display()),
        error,
    })?;
    file.set_len(inspection.image_size)
        .map_err(|error| PayloadError::Io {
            context: format!("sizing {}", image.display()),
            error,
        })?;
    drop(file);
    let target: Arc<dyn InstallTarget> = Arc::new(FileRange::whole(image)?);
    install::install_from_file(
        payload,
        target,
        InstallOptions::new(vec![key.clone()]),
        &mut |_| {},
    )?;
    Ok(())
}

/// The name clients download a delta as: plain, from both versions.
pub fn delta_file_name(source: &str, target: &str) -> String {
    let clean = |v: &str| -> String {
        v.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("delta-{}-to-{}.payload", clean(source), clean(target))
}

/// Generation yields the CPU to serving: a nice value of 10 for this thread and the
/// threads it starts (Linux keeps nice per thread and copies it to new threads).
fn lower_priority() {
    // SAFETY: setpriority on the calling thread's id changes nothing else.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> DeltaJob {
        let pkg = |id: &str, version: &str| crate::store::PackageRow {
            id: id.into(),
            app_id: "app".into(),
            version: version.into(),
            arch: "amd64".into(),
            file_name: "update.gz".into(),
            base_url: None,
            size: 1000,
            sha1_b64: String::new(),
            sha256_b64: String::new(),
            created_at: 0,
            payload_ops: None,
            image_sha256: None,
        };
        DeltaJob {
            source: pkg("p1", "1.0.0"),
            target: pkg("p2", "2.0.0"),
        }
    }

    #[test]
    fn each_ending_is_one_row_and_one_message() {
        let hosted = Built::Hosted {
            id: "d1".into(),
            file_name: delta_file_name("1.0.0", "2.0.0"),
            size: 250,
            sha1: [1; 20],
            sha256: [2; 32],
            operations: 7,
        };
        let (row, msg) = outcome(&job(), Ok(hosted), 3.0, 42);
        assert_eq!(
            (row.id.as_str(), row.state, row.size, row.created_at),
            ("d1", DeltaState::Ready, 250, 42)
        );
        assert_eq!(
            (row.package_id.as_str(), row.source_package_id.as_str()),
            ("p2", "p1")
        );
        assert_eq!(
            msg,
            "delta 1.0.0 → 2.0.0 (amd64) ready: 250 bytes, 25.0 % of the 1000-byte full payload (7 operations, made in 3 s)"
        );
        let (row, msg) = outcome(&job(), Ok(Built::NotSmaller { delta: 1200 }), 1.0, 42);
        assert_eq!((row.state, row.size), (DeltaState::NotSmaller, 0));
        assert_eq!(row.note.as_deref(), Some("1200 bytes, full payload 1000"));
        assert!(msg.contains("machines on 1.0.0 get the full one"), "{msg}");
        let (row, msg) = outcome(&job(), Err(DeltaError::Lost), 1.0, 42);
        assert_eq!(row.state, DeltaState::Failed);
        assert_eq!(
            row.note.as_deref(),
            Some("the generator thread ended without an answer")
        );
        assert!(
            msg.starts_with("delta 1.0.0 → 2.0.0 (amd64) failed: "),
            "{msg}"
        );
    }

    #[test]
    fn delta_file_names_are_plain() {
        assert_eq!(
            delta_file_name("3815.2.0", "3815.2.1"),
            "delta-3815.2.0-to-3815.2.1.payload"
        );
        let odd = delta_file_name("1/../x", "2 ?#");
        assert!(crate::store::check_file_name(&odd).is_ok(), "{odd}");
        assert_eq!(odd, "delta-1_.._x-to-2___.payload");
    }
}
