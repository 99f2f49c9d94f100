//! `fastpatch payload …` and `fastpatch keygen`: clap arguments and their run functions,
//! dispatched from the `fastpatch` binary.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::delta;
use crate::generate::{self, Compression, GenerateOptions};
use crate::install::{self, FileRange, InstallOptions, InstallTarget};
use crate::{keys, verify};

#[derive(Debug, Subcommand)]
pub enum PayloadCommand {
    /// Build a signed full payload from a USR partition image.
    Generate(GenerateArgs),
    /// Show what a payload contains (no signature check).
    Inspect(InspectArgs),
    /// Check a payload: every operation hash, the image hash and the signature.
    Verify(VerifyArgs),
    /// Install a payload onto a partition of a disk (or an image file), resumably.
    Install(InstallArgs),
    /// Sign a payload anew with a set of keys (key rotation: old and new, then new only).
    ///
    /// The payload must already verify with one of the given keys. Every key that should sign
    /// the result is given: the signature block's size is part of the signed manifest, so the
    /// old signatures cannot be kept and each key signs again.
    Sign(SignArgs),
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The signed payload.
    pub payload: PathBuf,
    /// PEM private key(s) to sign with; at least one must have signed the payload already.
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// Output payload file (default: replace the input).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The USR partition image.
    #[arg(long)]
    pub image: PathBuf,
    /// PEM private key(s) to sign with (PKCS#8 or PKCS#1); repeat for key rotation.
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// Output payload file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Chunk compression; zstd (REPLACE_ZSTD) unless --flatcar-compatible (then bz2).
    #[arg(long, value_enum)]
    pub compression: Option<Compression>,
    /// Emit only operations stock Flatcar update_engine understands (REPLACE, REPLACE_BZ).
    #[arg(long)]
    pub flatcar_compatible: bool,
    /// zstd level (1-22); default 9 for a full payload, 19 for a delta.
    #[arg(long)]
    pub zstd_level: Option<i32>,
    /// Make a delta: the image this payload updates from (the old USR image). The output is
    /// the delta, or the full payload when the delta would not be smaller.
    #[arg(long, value_name = "OLD_IMAGE", conflicts_with = "flatcar_compatible")]
    pub source: Option<PathBuf>,
    /// The source image's version, recorded in the delta's manifest.
    #[arg(long, requires = "source")]
    pub source_version: Option<String>,
    /// The full payload of --image, if already made: the delta must be smaller than it (and
    /// the output is a copy of it when not). Without it, a full payload is made to compare.
    #[arg(long, requires = "source")]
    pub full_payload: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    pub payload: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub payload: PathBuf,
    /// Trusted PEM public key(s), or directories of `*.pem`; any one valid signature suffices.
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    pub payload: PathBuf,
    /// Disk (image file or block device) holding the slot.
    #[arg(long, required_unless_present = "target_file")]
    pub disk: Option<PathBuf>,
    /// Partition number of the slot (4 = USR-B).
    #[arg(long, requires = "disk")]
    pub partition: Option<u32>,
    /// Write to this whole file or device instead of a disk partition.
    #[arg(long, conflicts_with = "disk")]
    pub target_file: Option<PathBuf>,
    /// Trusted PEM public key(s), or directories of `*.pem`.
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// Directory for resume checkpoints (resumes automatically when one matches).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Disk-write limit, bytes per second (e.g. 50M); unthrottled by default.
    #[arg(long, value_parser = parse_rate)]
    pub disk_rate: Option<u64>,
    /// For a delta payload: the file or device holding the image it applies to (on a
    /// machine, the booted USR partition). Opened read-only; checked before anything is written.
    #[arg(long)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Private key output (PKCS#8 PEM, mode 0600).
    #[arg(short, long, default_value = "private.pem")]
    pub output: PathBuf,
    /// Public key output (SPKI PEM); defaults to the private key path with `.pub.pem`.
    #[arg(long)]
    pub public: Option<PathBuf>,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s).map_err(|e| e.to_string())
}

fn bar(total: u64, what: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_string());
    Some(pb)
}

pub fn run(cmd: PayloadCommand) -> Result<()> {
    match cmd {
        PayloadCommand::Generate(a) => run_generate(a),
        PayloadCommand::Inspect(a) => run_inspect(a),
        PayloadCommand::Verify(a) => run_verify(a),
        PayloadCommand::Install(a) => run_install(a),
        PayloadCommand::Sign(a) => run_sign(a),
    }
}

fn run_sign(a: SignArgs) -> Result<()> {
    let keys = a
        .keys
        .iter()
        .map(|p| keys::load_private_key(p))
        .collect::<Result<Vec<_>, _>>()?;
    let out = a.output.as_ref().unwrap_or(&a.payload);
    let report = crate::resign::resign(&a.payload, &keys, out)
        .with_context(|| format!("signing {}", a.payload.display()))?;
    println!(
        "{}: {} bytes, {} signature(s)",
        out.display(),
        report.payload_len,
        report.signatures
    );
    println!(
        "payload sha256 (Omaha action sha256): {}",
        base64_sha(&report.payload_sha256)
    );
    Ok(())
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    let keys = a
        .keys
        .iter()
        .map(|p| keys::load_private_key(p))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(source) = a.source.clone() {
        return run_generate_delta(&a, &source, &keys);
    }
    let report = generate_full(&a, &keys, &a.output)?;
    print_full(&a.output, &report);
    Ok(())
}

fn generate_full(
    a: &GenerateArgs,
    keys: &[rsa::RsaPrivateKey],
    out: &std::path::Path,
) -> Result<generate::GenerateReport> {
    let compression = a.compression.unwrap_or(if a.flatcar_compatible {
        Compression::Bz2
    } else {
        Compression::Zstd
    });
    let opts = GenerateOptions {
        compression,
        flatcar_compatible: a.flatcar_compatible,
        zstd_level: a.zstd_level.unwrap_or(9),
    };
    let pb = bar(0, "generating");
    let report = generate::generate(&a.image, keys, out, &opts, &mut |done, total| {
        if let Some(pb) = &pb {
            pb.set_length(total);
            pb.set_position(done);
        }
    })
    .with_context(|| format!("generating {} from {}", out.display(), a.image.display()))?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok(report)
}

fn print_full(out: &std::path::Path, report: &generate::GenerateReport) {
    println!(
        "{}: {} bytes, {} operations ({} compressed), image {} bytes sha256 {}",
        out.display(),
        report.payload_len,
        report.operations,
        report.compressed_operations,
        report.image_size,
        hex::encode(report.image_sha256)
    );
    println!(
        "payload sha256 (Omaha action sha256): {}",
        base64_sha(&report.payload_sha256)
    );
}

/// A delta, bounded by the full payload: given (`--full-payload`) or made here to compare.
/// When the delta would not be smaller, the output is the full payload.
fn run_generate_delta(
    a: &GenerateArgs,
    source: &std::path::Path,
    keys: &[rsa::RsaPrivateKey],
) -> Result<()> {
    let dir = a
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut made_full = None;
    let full_path = match &a.full_payload {
        Some(p) => p.clone(),
        None => {
            let tmp = tempfile::Builder::new()
                .prefix(".full-")
                .tempfile_in(dir)
                .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
            tracing::info!("making the full payload to compare the delta with");
            generate_full(a, keys, tmp.path())?;
            let p = tmp.path().to_path_buf();
            made_full = Some(tmp);
            p
        }
    };
    let full_len = std::fs::metadata(&full_path)
        .with_context(|| format!("reading {}", full_path.display()))?
        .len();
    let opts = delta::DeltaOptions {
        zstd_level: a.zstd_level.unwrap_or(19),
        source_version: a.source_version.clone(),
        smaller_than: Some(full_len),
    };
    let pb = bar(0, "delta");
    let result = delta::generate_delta(
        source,
        &a.image,
        keys,
        &a.output,
        &opts,
        &mut |stage, done, total| {
            if let Some(pb) = &pb {
                pb.set_message(stage.label());
                pb.set_length(total);
                pb.set_position(done);
            }
        },
    );
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    match result {
        Ok(r) => {
            println!(
                "{}: delta of {} bytes ({:.1} % of the {full_len} byte full payload), {} operations; image {} bytes: {} copied, {} zero, {} changed ({} of {} groups patched against the source)",
                a.output.display(),
                r.payload_len,
                100.0 * r.payload_len as f64 / full_len as f64,
                r.operations,
                r.image_size,
                r.copied_bytes,
                r.zero_bytes,
                r.changed_bytes,
                r.patched_groups,
                r.changed_groups,
            );
            println!(
                "source {} bytes sha256 {}",
                r.source_size,
                hex::encode(r.source_sha256)
            );
            println!(
                "payload sha256 (Omaha action sha256): {}",
                base64_sha(&r.payload_sha256)
            );
            Ok(())
        }
        Err(e @ crate::PayloadError::DeltaNotSmaller { .. }) => {
            println!("{e}: {} is the full payload", a.output.display());
            match made_full {
                Some(tmp) => {
                    tmp.persist(&a.output)
                        .map_err(|e| e.error)
                        .with_context(|| {
                            format!("moving the full payload to {}", a.output.display())
                        })?;
                }
                None => {
                    std::fs::copy(&full_path, &a.output).with_context(|| {
                        format!("copying {} to {}", full_path.display(), a.output.display())
                    })?;
                }
            }
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "generating a delta {} from {} to {}",
            a.output.display(),
            source.display(),
            a.image.display()
        ))),
    }
}

fn base64_sha(h: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(h)
}

fn open(path: &PathBuf) -> Result<std::io::BufReader<std::fs::File>> {
    Ok(std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
    ))
}

fn print_inspection(i: &verify::Inspection) {
    println!("payload length:   {}", i.payload_len);
    println!("manifest length:  {}", i.manifest_len);
    println!("block size:       {}", i.block_size);
    println!("image size:       {}", i.image_size);
    println!("image sha256:     {}", i.image_sha256);
    println!("operations:       {}", i.operations);
    for k in &i.op_kinds {
        println!(
            "  {:<13} {:>6} ops, {:>12} data bytes -> {:>12} bytes",
            k.kind, k.count, k.data_bytes, k.dst_bytes
        );
    }
    println!("noop operations:  {}", i.noop_operations);
    match (i.signatures_offset, i.signatures_size) {
        (Some(o), Some(s)) => println!(
            "signatures:       {s} bytes at data offset {o}, versions {:?}",
            i.signature_versions
        ),
        _ => println!("signatures:       none (unsigned)"),
    }
    println!("procedures:       {}", i.procedures);
}

fn run_inspect(a: InspectArgs) -> Result<()> {
    let i = verify::inspect(open(&a.payload)?)
        .with_context(|| format!("inspecting {}", a.payload.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&i)?);
    } else {
        print_inspection(&i);
    }
    Ok(())
}

fn run_verify(a: VerifyArgs) -> Result<()> {
    let files = keys::load_public_key_files(&a.keys)?;
    let trusted: Vec<_> = files.iter().map(|(_, k)| k.clone()).collect();
    let v = verify::verify(open(&a.payload)?, &trusted)
        .with_context(|| format!("verifying {}", a.payload.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: OK (signature {} verified with {}; {} operations; image hash {})",
            a.payload.display(),
            v.signature.signature_index,
            files[v.signature.key_index].0.display(),
            v.inspection.operations,
            if v.image_hash_checked {
                "checked"
            } else {
                "not checkable offline (out-of-order writes)"
            }
        );
    }
    Ok(())
}

fn run_install(a: InstallArgs) -> Result<()> {
    let trusted = keys::load_public_keys(&a.keys)?;
    let target: Arc<dyn InstallTarget> = match (&a.target_file, &a.disk) {
        (Some(f), _) => Arc::new(FileRange::whole(f)?),
        (None, Some(d)) => {
            let index = a.partition.context("--partition is required with --disk")?;
            Arc::new(FileRange::partition(d, index)?)
        }
        (None, None) => anyhow::bail!("give --disk and --partition, or --target-file"),
    };
    let mut opts = InstallOptions::new(trusted);
    opts.state_dir = a.state_dir.clone();
    opts.disk_rate = a.disk_rate;
    if let Some(source) = &a.source {
        opts.source = Some(Arc::new(install::SourceFile::whole(source)?));
    }
    let total = std::fs::metadata(&a.payload)
        .with_context(|| format!("reading {}", a.payload.display()))?
        .len();
    let pb = bar(total, "installing");
    let report = install::install_from_file(&a.payload, target, opts, &mut |inst| {
        if let Some(pb) = &pb {
            pb.set_position(inst.offset());
        }
    })
    .with_context(|| format!("installing {}", a.payload.display()))?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    println!(
        "installed {} bytes ({} operations), image sha256 {}{}",
        report.image_size,
        report.operations,
        hex::encode(report.image_sha256),
        if report.resumed_from > 0 {
            format!(", resumed at payload byte {}", report.resumed_from)
        } else {
            String::new()
        }
    );
    Ok(())
}

pub fn run_keygen(a: KeygenArgs) -> Result<()> {
    let public = a.public.clone().unwrap_or_else(|| {
        let mut s = a.output.clone().into_os_string();
        s.push(".pub.pem");
        PathBuf::from(s)
    });
    keys::write_key_pair(&a.output, &public)?;
    println!(
        "wrote {} (private) and {} (public)",
        a.output.display(),
        public.display()
    );
    Ok(())
}
