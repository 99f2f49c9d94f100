//! `fastpatch payload …` and `fastpatch keygen`: clap arguments and their run functions,
//! dispatched from the `fastpatch` binary.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

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
    /// zstd level (1-22).
    #[arg(long, default_value_t = 9)]
    pub zstd_level: i32,
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
    let compression = a.compression.unwrap_or(if a.flatcar_compatible {
        Compression::Bz2
    } else {
        Compression::Zstd
    });
    let opts = GenerateOptions {
        compression,
        flatcar_compatible: a.flatcar_compatible,
        zstd_level: a.zstd_level,
    };
    let pb = bar(0, "generating");
    let report = generate::generate(&a.image, &keys, &a.output, &opts, &mut |done, total| {
        if let Some(pb) = &pb {
            pb.set_length(total);
            pb.set_position(done);
        }
    })
    .with_context(|| {
        format!(
            "generating {} from {}",
            a.output.display(),
            a.image.display()
        )
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    println!(
        "{}: {} bytes, {} operations ({} compressed), image {} bytes sha256 {}",
        a.output.display(),
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
    Ok(())
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
