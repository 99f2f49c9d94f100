//! `fastpatch image`: build a release of a fastpatch OS from a root filesystem, and check one.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::BuildOptions;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build a release from a merged-/usr root filesystem (directory or .tar/.tar.zst, e.g.
    /// from `mmdebstrap --variant=minbase --include=systemd,dbus,udev,linux-image-amd64`):
    /// OUT/usr.img (sealed USR image: ext4 + signed seal + dm-verity tree), OUT/update.payload
    /// (signed, for `fastpatch-server publish`), OUT/disk.img (bootable disk, USR-A holds the
    /// release, ROOT is populated on first boot) and OUT/release.json.
    Build(BuildArgs),
    /// Check a sealed USR image or slot (a file or a partition such as /dev/vda4): the seal's
    /// signature, then every block against the dm-verity tree. With --release-dir, also the
    /// SHA-256 of the build's files against its release.json.
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// The root filesystem: a directory or a tarball with merged /usr and a kernel.
    pub rootfs: PathBuf,
    /// The release version (os-release VERSION; what the engine reports to the server).
    #[arg(long)]
    pub version: String,
    /// Output directory (created; refused if it exists, unless --force).
    #[arg(long, short)]
    pub out: PathBuf,
    /// PEM private key signing the release (repeat for key rotation). Required.
    #[arg(long = "key", value_name = "PEM")]
    pub keys: Vec<PathBuf>,
    /// The slot initramfs' init: the static fastpatch-boot-init binary.
    /// Default: fastpatch-boot-init beside this program.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// The fastpatch binary to install as /usr/bin/fastpatch. Default: this program.
    #[arg(long)]
    pub fastpatch: Option<PathBuf>,
    /// The engine daemon's binary to install as /usr/bin/fastpatch-engined (what
    /// fastpatch-engine.service runs). Default: fastpatch-engined beside the fastpatch binary.
    #[arg(long)]
    pub engined: Option<PathBuf>,
    /// The kernel to use when the tree has several (a directory name in /usr/lib/modules).
    #[arg(long)]
    pub kernel_version: Option<String>,
    /// Words this release adds to its kernel's command line (e.g. `quiet` or a console), stored
    /// in /usr/boot/cmdline and so verified with /usr; the boot chain adds the slot's own.
    #[arg(long, value_name = "WORDS")]
    pub cmdline: Option<String>,
    /// Size of each USR slot; the sealed image must fit.
    #[arg(long, default_value = "1G", value_parser = parse_bytes)]
    pub slot_size: u64,
    /// Size of the (sparse) disk image.
    #[arg(long, default_value = "3G", value_parser = parse_bytes)]
    pub disk_size: u64,
    /// Replace an existing output directory (only once the new build is complete).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The sealed USR image or slot.
    pub slot: PathBuf,
    /// Trusted public key(s) (PEM files or directories of *.pem).
    #[arg(long = "key", value_name = "PEM", required = true)]
    pub keys: Vec<PathBuf>,
    /// A build's output directory: also check its files against release.json.
    #[arg(long)]
    pub release_dir: Option<PathBuf>,
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(text)
        .map_err(|e| format!("{text:?} is not a size ({e})"))
}

pub fn run(cmd: ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::Build(args) => run_build(args),
        ImageCommand::Verify(args) => run_verify(args),
    }
}

fn beside_me(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this program's path")?;
    Ok(me.with_file_name(name))
}

fn run_build(a: BuildArgs) -> Result<()> {
    let mut opts = BuildOptions::new(a.rootfs, a.version, a.out);
    opts.keys = a.keys;
    opts.init = match a.init {
        Some(p) => p,
        None => beside_me("fastpatch-boot-init")?,
    };
    opts.fastpatch_binary = match a.fastpatch {
        Some(p) => p,
        None => std::env::current_exe().context("cannot find this program's path")?,
    };
    opts.engined_binary = match a.engined {
        Some(p) => p,
        None => opts.fastpatch_binary.with_file_name("fastpatch-engined"),
    };
    opts.kernel_version = a.kernel_version;
    opts.cmdline = a.cmdline;
    opts.slot_size = a.slot_size;
    opts.disk_size = a.disk_size;
    opts.force = a.force;
    let started = std::time::Instant::now();
    let release = crate::build(&opts, &mut |step| eprintln!("image: {step}"))
        .with_context(|| format!("cannot build release {}", opts.version))?;
    println!(
        "built {} in {:.1} s: kernel {}, USR image {} MiB of a {} MiB slot, payload {} MiB, root hash {}",
        release.version,
        started.elapsed().as_secs_f64(),
        release.kernel_version,
        release.usr_image_bytes >> 20,
        release.slot_size >> 20,
        release.payload_bytes >> 20,
        release.root_hash
    );
    for name in [
        crate::USR_IMAGE,
        crate::PAYLOAD,
        crate::DISK_IMAGE,
        crate::RELEASE_JSON,
    ] {
        println!("  {}", opts.out_dir.join(name).display());
    }
    Ok(())
}

fn run_verify(a: VerifyArgs) -> Result<()> {
    let keys = fastpatch_payload::keys::load_public_keys(&a.keys)?;
    let seal = crate::verity::check(&a.slot, &keys)
        .with_context(|| format!("{} does not verify", a.slot.display()))?;
    println!(
        "{}: version {}, verified ({} data bytes, root hash {})",
        a.slot.display(),
        seal.body.version,
        seal.body.data_bytes,
        seal.body.root_hash
    );
    if let Some(dir) = a.release_dir {
        let release = crate::output::check_hashes(&dir)?;
        println!(
            "{}: release {} files match release.json",
            dir.display(),
            release.version
        );
    }
    Ok(())
}
