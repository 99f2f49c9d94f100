//! The streaming installer: payload bytes in (pushed as they arrive), the passive slot out.
//!
//! Three threads overlap the work: the caller's thread parses and hashes the payload
//! ([`Demux`]), a writer thread checks each operation's hash and expands it onto the slot,
//! a verifier thread reads the slot back and hashes it. Memory stays bounded by a few
//! operations' data (1 MiB chunks) plus the held-back first MiB.
//!
//! Order of events (the durability points are documented in docs/guarantees.md):
//! 1. fresh install: zero the slot's first MiB and fsync, so a partial slot never mounts;
//! 2. stream: each operation is hash-checked, then written; every `checkpoint_bytes` the
//!    target is fsynced and a checkpoint saved (resume point + held-back head);
//! 3. end of stream: signature checked against the trusted keys, writer drained, target
//!    fsynced, slot read back and compared with `new_partition_info`;
//! 4. only then the first MiB is written, fsynced and read back; the checkpoint is removed
//!    and success reported.

pub mod source;
mod state;
pub mod target;
mod verifier;
mod writer;

use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use prost::Message;
use rsa::RsaPublicKey;

use crate::error::{IoContext, PayloadError, Result};
use crate::failpoint::fail_here;
use crate::format::{self, Plan};
use crate::proto::DeltaArchiveManifest;
use crate::signing::{self, SignatureMatch};
use crate::stream::{Demux, Item};

pub use source::{InstallSource, SourceFile};
pub use state::StateStore;
pub use target::{FileRange, InstallTarget};

/// The slot's first bytes, held back until everything has verified (filesystem superblock).
pub const HEAD_LEN: u64 = 1 << 20;
/// Default distance between durable checkpoints, in slot bytes written.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 64 << 20;

/// How an install runs.
#[derive(Clone)]
pub struct InstallOptions {
    /// Keys a payload signature must verify with (at least one; any one suffices).
    pub trusted_keys: Vec<RsaPublicKey>,
    /// Directory for resume checkpoints; None disables resume.
    pub state_dir: Option<PathBuf>,
    /// Identity of the payload (e.g. the Omaha sha256); a checkpoint is only resumed for
    /// the same id and target.
    pub payload_id: Option<String>,
    /// Disk-write limit in bytes/s (None = unthrottled).
    pub disk_rate: Option<u64>,
    pub checkpoint_bytes: u64,
    /// The image a delta payload applies to (the booted slot); a full payload ignores it.
    pub source: Option<Arc<dyn InstallSource>>,
}

impl InstallOptions {
    pub fn new(trusted_keys: Vec<RsaPublicKey>) -> InstallOptions {
        InstallOptions {
            trusted_keys,
            state_dir: None,
            payload_id: None,
            disk_rate: None,
            checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
            source: None,
        }
    }
}

/// What a successful install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    pub payload_len: u64,
    pub image_size: u64,
    pub image_sha256: [u8; 32],
    pub operations: usize,
    pub signature: SignatureMatch,
    /// Payload offset this run started at (non-zero after a resume).
    pub resumed_from: u64,
    /// Slot bytes written by this run, not counting the held-back first MiB.
    pub bytes_written: u64,
}

struct Pipeline {
    jobs: Option<SyncSender<writer::Job>>,
    writer: Option<JoinHandle<Result<writer::WriterOutput>>>,
    verify_tx: Option<SyncSender<writer::VerifyMsg>>,
    verifier: Option<JoinHandle<Result<Option<verifier::Streaming>>>>,
}

impl Pipeline {
    fn start(
        plan: Arc<Plan>,
        target: Arc<dyn InstallTarget>,
        state: Option<StateStore>,
        head: Vec<u8>,
        opts: &InstallOptions,
    ) -> Result<Pipeline> {
        let (jobs_tx, jobs_rx) = mpsc::sync_channel(3);
        let (verify_tx, verify_rx) = mpsc::sync_channel(256);
        let vtarget = target.clone();
        let size = plan.new_size;
        let verifier = std::thread::Builder::new()
            .name("payload-verify".into())
            .spawn(move || verifier::run(vtarget, size, verify_rx))
            .ctx(|| "starting the verifier thread".into())?;
        let cfg = writer::WriterConfig {
            plan,
            target,
            source: opts.source.clone(),
            state,
            head,
            disk_rate: opts.disk_rate,
            checkpoint_bytes: opts.checkpoint_bytes.max(1),
        };
        let wtx = verify_tx.clone();
        let writer = std::thread::Builder::new()
            .name("payload-write".into())
            .spawn(move || writer::run(cfg, jobs_rx, wtx))
            .ctx(|| "starting the writer thread".into())?;
        Ok(Pipeline {
            jobs: Some(jobs_tx),
            writer: Some(writer),
            verify_tx: Some(verify_tx),
            verifier: Some(verifier),
        })
    }

    /// Hands a job to the writer; if the writer has stopped, returns its error.
    fn send(&mut self, job: writer::Job) -> Result<()> {
        let sent = self
            .jobs
            .as_ref()
            .map(|tx| tx.send(job).is_ok())
            .unwrap_or(false);
        if sent {
            return Ok(());
        }
        match self.join_writer() {
            Err(e) => Err(e),
            Ok(_) => Err(PayloadError::Poisoned("writer thread stopped".into())),
        }
    }

    fn join_writer(&mut self) -> Result<writer::WriterOutput> {
        self.jobs = None;
        let handle = self
            .writer
            .take()
            .ok_or_else(|| PayloadError::Poisoned("writer already joined".into()))?;
        handle
            .join()
            .map_err(|_| PayloadError::Poisoned("writer thread panicked".into()))?
    }

    fn join_verifier(&mut self) -> Result<Option<verifier::Streaming>> {
        self.verify_tx = None;
        let handle = self
            .verifier
            .take()
            .ok_or_else(|| PayloadError::Poisoned("verifier already joined".into()))?;
        handle
            .join()
            .map_err(|_| PayloadError::Poisoned("verifier thread panicked".into()))?
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Stop and wait, so no write lands after the installer is gone.
        self.jobs = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        self.verify_tx = None;
        if let Some(v) = self.verifier.take() {
            let _ = v.join();
        }
    }
}

/// A streaming install onto one target. Feed it the payload bytes from
/// [`resume_offset`](Installer::resume_offset) on, in order, then call [`finish`](Installer::finish).
pub struct Installer {
    target: Arc<dyn InstallTarget>,
    opts: InstallOptions,
    demux: Demux,
    state: Option<StateStore>,
    plan: Option<Arc<Plan>>,
    pipeline: Option<Pipeline>,
    signature: Option<SignatureMatch>,
    resumed_from: u64,
    failed: Option<String>,
}

impl Installer {
    /// Prepares an install onto `target`. With `opts.state_dir` set and a checkpoint there
    /// for the same payload id and target, the install resumes: feed from `resume_offset()`.
    pub fn new(target: Arc<dyn InstallTarget>, opts: InstallOptions) -> Result<Installer> {
        if opts.trusted_keys.is_empty() {
            return Err(PayloadError::NoTrustedKeys);
        }
        let mut state = match &opts.state_dir {
            Some(dir) => Some(StateStore::new(
                dir,
                opts.payload_id.clone(),
                target.identity(),
            )?),
            None => None,
        };
        let mut me = Installer {
            demux: Demux::new(Some(target.size()), true),
            target,
            opts,
            state: None,
            plan: None,
            pipeline: None,
            signature: None,
            resumed_from: 0,
            failed: None,
        };
        if let Some(saved) = state.as_ref().and_then(|s| s.load()) {
            match me.resume_from(saved, state.as_mut().expect("state present")) {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!("cannot resume the saved install ({e}); starting over");
                    me.demux = Demux::new(Some(me.target.size()), true);
                    me.plan = None;
                    me.pipeline = None;
                }
            }
        }
        me.state = state;
        Ok(me)
    }

    fn resume_from(&mut self, saved: state::Saved, store: &mut StateStore) -> Result<()> {
        let manifest = DeltaArchiveManifest::decode(saved.manifest.as_slice())?;
        let plan = Arc::new(format::plan(
            &manifest,
            saved.manifest.len() as u64,
            Some(self.target.size()),
        )?);
        self.check_source(&plan)?;
        let demux = Demux::resume(plan.clone(), saved.point.clone(), true)?;
        let head_len = head_len(self.target.size());
        let mut head = saved.head;
        head.resize(head_len, 0);
        store.adopt(&saved.manifest);
        self.pipeline = Some(Pipeline::start(
            plan.clone(),
            self.target.clone(),
            Some(store.clone()),
            head,
            &self.opts,
        )?);
        self.plan = Some(plan);
        self.demux = demux;
        self.resumed_from = saved.point.offset;
        tracing::info!(
            offset = saved.point.offset,
            next_op = saved.point.next_op,
            "resuming install"
        );
        Ok(())
    }

    /// The payload byte offset the next `feed` must start at (0 unless resuming); an HTTP
    /// download asks for `Range: bytes=<resume_offset>-`.
    pub fn resume_offset(&self) -> u64 {
        self.resumed_from
    }

    /// Absolute payload offset consumed so far.
    pub fn offset(&self) -> u64 {
        self.demux.offset()
    }

    /// Total payload length, once the manifest has been read.
    pub fn total_len(&self) -> Option<u64> {
        self.demux.total_len()
    }

    /// Pushes the next bytes of the payload.
    pub fn feed(&mut self, data: &[u8]) -> Result<()> {
        if let Some(msg) = &self.failed {
            return Err(PayloadError::Poisoned(msg.clone()));
        }
        let result = self.feed_inner(data);
        result.map_err(|e| self.fail(e))
    }

    /// Stops the pipeline after an error and returns the error to report: a failure the
    /// writer hit first (say, an operation hash mismatch) is more precise than what the
    /// parser saw afterwards (the signature over the same bytes failing).
    fn fail(&mut self, mut e: PayloadError) -> PayloadError {
        if let Some(mut p) = self.pipeline.take() {
            if p.writer.is_some() {
                if let Err(first) = p.join_writer() {
                    if !matches!(first, PayloadError::Poisoned(_)) {
                        e = first;
                    }
                }
            }
        } // dropping the pipeline stops and joins the threads
        self.failed = Some(e.to_string());
        if matches!(
            e,
            PayloadError::BadSignature { .. } | PayloadError::BadSignatureBlock(_)
        ) {
            if let Some(s) = &self.state {
                let _ = s.clear();
            }
        }
        e
    }

    fn feed_inner(&mut self, data: &[u8]) -> Result<()> {
        let mut demux = std::mem::replace(&mut self.demux, Demux::new(None, true));
        let result = demux.push(data, &mut |item| self.handle(item));
        self.demux = demux;
        result
    }

    fn handle(&mut self, item: Item) -> Result<()> {
        match item {
            Item::Manifest { raw, plan, .. } => {
                self.check_source(&plan)?;
                self.clear_head()?;
                if let Some(store) = &mut self.state {
                    store.begin(&raw)?;
                }
                let head = vec![0u8; head_len(self.target.size())];
                self.pipeline = Some(Pipeline::start(
                    plan.clone(),
                    self.target.clone(),
                    self.state.clone(),
                    head,
                    &self.opts,
                )?);
                self.plan = Some(plan);
                Ok(())
            }
            Item::OpData { op, data, resume } => {
                let pipeline = self
                    .pipeline
                    .as_mut()
                    .ok_or_else(|| PayloadError::Poisoned("no pipeline".into()))?;
                pipeline.send(writer::Job { op, data, resume })
            }
            Item::Signatures { blob, digest } => {
                self.signature = Some(signing::verify(&digest, &blob, &self.opts.trusted_keys)?);
                Ok(())
            }
        }
    }

    /// A delta's source must be present and be exactly the image the delta was made
    /// against; checked before the target is touched.
    fn check_source(&self, plan: &Plan) -> Result<()> {
        let Some(want) = &plan.source else {
            return Ok(());
        };
        let source = self
            .opts
            .source
            .as_deref()
            .ok_or_else(|| PayloadError::DeltaNeedsSource {
                from: want
                    .version
                    .clone()
                    .unwrap_or_else(|| "an unnamed version".into()),
            })?;
        source::check(source, want)?;
        tracing::info!(
            source = %source.identity(),
            version = want.version.as_deref().unwrap_or("-"),
            "delta source verified"
        );
        Ok(())
    }

    /// Zeroes the slot's first MiB so that a partly written slot is never a mountable
    /// filesystem, and makes that durable before any payload data is written.
    fn clear_head(&self) -> Result<()> {
        let zeros = vec![0u8; head_len(self.target.size())];
        self.target
            .write_at(&zeros, 0)
            .ctx(|| "clearing the slot's first MiB".into())?;
        fail_here!("payload::head_clear::before_sync");
        self.target
            .sync()
            .ctx(|| "syncing the cleared first MiB".into())
    }

    /// Ends the stream: checks completeness, signature, the written slot, then writes the
    /// held-back first MiB. Success means the slot holds exactly the signed image.
    pub fn finish(mut self) -> Result<InstallReport> {
        if let Some(msg) = &self.failed {
            return Err(PayloadError::Poisoned(msg.clone()));
        }
        let result = self.finish_inner();
        result.map_err(|e| self.fail(e))
    }

    fn finish_inner(&mut self) -> Result<InstallReport> {
        let mut demux = std::mem::replace(&mut self.demux, Demux::new(None, true));
        let ended = demux.finish(&mut |item| self.handle(item));
        self.demux = demux;
        ended?;
        let plan = self
            .plan
            .clone()
            .ok_or_else(|| PayloadError::Poisoned("no manifest".into()))?;
        let signature = self.signature.ok_or(PayloadError::Unsigned)?;
        let pipeline = self
            .pipeline
            .as_mut()
            .ok_or_else(|| PayloadError::Poisoned("no pipeline".into()))?;
        let written = pipeline.join_writer()?;
        fail_here!("payload::finish::before_data_sync");
        self.target
            .sync()
            .ctx(|| "syncing the written slot".into())?;
        let streamed = pipeline.join_verifier()?;
        let got = verifier::conclude(&*self.target, &written.head, plan.new_size, streamed)?;
        if got != plan.new_sha256 {
            return Err(PayloadError::PartitionMismatch(format!(
                "SHA-256 of the first {} bytes is {}, manifest says {}",
                plan.new_size,
                hex::encode(got),
                hex::encode(plan.new_sha256)
            )));
        }
        fail_here!("payload::finish::before_head_write");
        self.target
            .write_at(&written.head, 0)
            .ctx(|| "writing the slot's first MiB".into())?;
        fail_here!("payload::finish::before_head_sync");
        self.target
            .sync()
            .ctx(|| "syncing the slot's first MiB".into())?;
        let mut back = vec![0u8; written.head.len()];
        self.target
            .read_at(&mut back, 0)
            .ctx(|| "reading back the slot's first MiB".into())?;
        if let Some(pos) = back.iter().zip(&written.head).position(|(a, b)| a != b) {
            return Err(PayloadError::ReadbackMismatch(pos as u64));
        }
        fail_here!("payload::finish::before_state_clear");
        if let Some(s) = &self.state {
            s.clear()?;
        }
        Ok(InstallReport {
            payload_len: plan.total_len(),
            image_size: plan.new_size,
            image_sha256: plan.new_sha256,
            operations: plan.ops.len(),
            signature,
            resumed_from: self.resumed_from,
            bytes_written: written.bytes_written,
        })
    }
}

fn head_len(slot_len: u64) -> usize {
    HEAD_LEN.min(slot_len) as usize
}

impl io::Write for Installer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.feed(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Installs from a reader that yields the payload from byte 0; when resuming, the bytes
/// before the resume offset are read and dropped (use [`install_from_file`] to seek).
pub fn install_from_reader(
    mut reader: impl Read,
    target: Arc<dyn InstallTarget>,
    opts: InstallOptions,
) -> Result<InstallReport> {
    let mut installer = Installer::new(target, opts)?;
    let skip = installer.resume_offset();
    io::copy(&mut (&mut reader).take(skip), &mut io::sink())
        .ctx(|| "skipping to the resume offset".into())?;
    pump(reader, &mut installer, &mut |_| {})?;
    installer.finish()
}

/// Installs a payload file, seeking to the resume offset; `progress(offset, total)` is
/// called as bytes go in.
pub fn install_from_file(
    path: &std::path::Path,
    target: Arc<dyn InstallTarget>,
    opts: InstallOptions,
    progress: &mut dyn FnMut(&Installer),
) -> Result<InstallReport> {
    let mut file =
        std::fs::File::open(path).ctx(|| format!("opening payload {}", path.display()))?;
    let mut installer = Installer::new(target, opts)?;
    file.seek(SeekFrom::Start(installer.resume_offset()))
        .ctx(|| "seeking to the resume offset".into())?;
    pump(file, &mut installer, progress)?;
    installer.finish()
}

fn pump(
    mut reader: impl Read,
    installer: &mut Installer,
    progress: &mut dyn FnMut(&Installer),
) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(PayloadError::Io {
                    context: "reading the payload".into(),
                    error: e,
                })
            }
        };
        installer.feed(&buf[..n])?;
        progress(installer);
    }
}

// The engine moves an installer into a blocking task of its async runtime.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Installer>();
};
