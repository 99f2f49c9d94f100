//! `fastpatch image build`: turns a merged-/usr root filesystem (a directory or a tarball, e.g.
//! from `mmdebstrap`) and a version into a release of a fastpatch OS:
//!
//! - `usr.img`: the sealed USR image: the tree's /usr as ext4 (no journal) with os-release
//!   `VERSION`, the slot's own kernel and initramfs under `/usr/boot`, the `fastpatch` binary,
//!   its units and the payload key; then the signed seal and the dm-verity hash tree
//!   ([`fastpatch_payload::seal`] has the layout);
//! - `update.payload`: that image as a signed CrAU full payload, for `fastpatch-server publish`;
//! - `disk.img`: a bootable disk with Flatcar's layout, `usr.img` in USR-A (marked good), an
//!   empty ROOT that the first boot populates from `/usr/share/factory`;
//! - `release.json`: version, kernel, root hash, sizes and SHA-256 of the files.
//!
//! The pipeline, one step each: open the tree ([`source`]) → find the kernel ([`kernel`]) →
//! write the slot initramfs ([`initramfs`]) → stage /usr ([`usr_tree`]) → make the file system
//! ([`filesystem`]) → seal it ([`verity`]) → payload and disk ([`output`]). Everything is built
//! in a hidden directory beside the output, which is renamed into place only when every step
//! succeeded: a failed build leaves nothing behind.

pub mod cli;
mod error;
pub mod filesystem;
pub mod initramfs;
pub mod kernel;
pub mod output;
pub mod source;
pub mod usr_tree;
pub mod verity;

use std::path::{Path, PathBuf};

use error::io_err;
pub use error::{ImageError, Result};
use rsa::RsaPrivateKey;

/// The names of a build's outputs inside the output directory.
pub const USR_IMAGE: &str = "usr.img";
pub const PAYLOAD: &str = "update.payload";
pub const DISK_IMAGE: &str = "disk.img";
pub const RELEASE_JSON: &str = "release.json";

const MIB: u64 = 1 << 20;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// A root filesystem directory or tarball with merged /usr.
    pub rootfs: PathBuf,
    pub version: String,
    /// The output directory (created; it must not exist unless `force`).
    pub out_dir: PathBuf,
    /// Release signing keys (PEM private keys): they sign the seal and the payload.
    pub keys: Vec<PathBuf>,
    /// The static init of the slot's initramfs (fastpatch's boot init).
    pub init: PathBuf,
    /// The `fastpatch` binary installed as `/usr/bin/fastpatch`.
    pub fastpatch_binary: PathBuf,
    /// The daemon-only `fastpatch-engined` installed as `/usr/bin/fastpatch-engined`: what
    /// fastpatch-engine.service runs (less code mapped by a process that stays resident).
    pub engined_binary: PathBuf,
    /// The kernel to use when the tree has several.
    pub kernel_version: Option<String>,
    /// Words this release adds to its kernel's command line (`/usr/boot/cmdline`).
    pub cmdline: Option<String>,
    /// The size of each USR partition; the sealed image must fit.
    pub slot_size: u64,
    /// The size of the disk image (sparse).
    pub disk_size: u64,
    pub force: bool,
}

impl BuildOptions {
    pub fn new(rootfs: PathBuf, version: String, out_dir: PathBuf) -> BuildOptions {
        BuildOptions {
            rootfs,
            version,
            out_dir,
            keys: Vec::new(),
            init: PathBuf::new(),
            fastpatch_binary: PathBuf::new(),
            engined_binary: PathBuf::new(),
            kernel_version: None,
            cmdline: None,
            slot_size: 1024 * MIB,
            disk_size: 3 * 1024 * MIB,
            force: false,
        }
    }
}

/// What a build made (also written as `release.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Release {
    pub version: String,
    pub kernel_version: String,
    pub root_hash: String,
    /// Bytes of the verified file system, and of the whole sealed image.
    pub usr_fs_bytes: u64,
    pub usr_image_bytes: u64,
    pub usr_image_sha256: String,
    pub payload_bytes: u64,
    pub payload_sha256: String,
    pub slot_size: u64,
    pub initramfs_modules: Vec<String>,
    /// tmpfiles.d rules that populate ROOT.
    pub factory_rules: usize,
}

/// Builds a release into `opts.out_dir`, reporting each step to `progress`.
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<Release> {
    usr_tree::check_version(&opts.version)?;
    usr_tree::check_cmdline(opts.cmdline.as_deref())?;
    let keys = load_keys(&opts.keys)?;
    let public_pem = fastpatch_payload::keys::public_key_pem(&keys[0].to_public_key())?;
    check_out_dir(&opts.out_dir, opts.force)?;
    let parent = match opts.out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".fastpatch-image-")
        .tempdir_in(&parent)
        .map_err(io_err(format!(
            "creating a work directory in {}",
            parent.display()
        )))?;
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).map_err(io_err(format!("creating {}", work.display())))?;

    progress(&format!("reading {}", opts.rootfs.display()));
    let tree = source::open(&opts.rootfs, &work)?;
    let kernel = kernel::find(&tree, opts.kernel_version.as_deref())?;
    progress(&format!(
        "kernel {}: writing the slot initramfs",
        kernel.version
    ));
    let initramfs_path = work.join("initramfs.img");
    let modules = write_slot_initramfs(&kernel, &opts.init, &initramfs_path)?;

    progress("staging /usr");
    let usr = usr_tree::stage(&tree, &work)?;
    usr_tree::set_os_release(&usr, &opts.version)?;
    usr_tree::add_boot(
        &usr,
        &kernel.image,
        &initramfs_path,
        opts.cmdline.as_deref(),
    )?;
    usr_tree::add_fastpatch(
        &usr,
        &opts.fastpatch_binary,
        &opts.engined_binary,
        &public_pem,
    )?;
    let factory_rules = usr_tree::add_factory(&tree, &usr)?;

    progress("making the USR file system");
    let image = tmp.path().join(USR_IMAGE);
    let usr_fs_bytes = filesystem::make_usr_fs(&usr, &image, "USR")?;
    std::fs::remove_dir_all(&work).map_err(io_err(format!("removing {}", work.display())))?;
    progress("sealing: dm-verity hash tree and signed root hash");
    let body = verity::seal_image(&image, &opts.version, &keys)?;
    let usr_image_bytes = file_len(&image)?;
    if usr_image_bytes > opts.slot_size {
        return Err(ImageError::TooBig {
            image: usr_image_bytes,
            slot: opts.slot_size,
        });
    }

    progress("signing the update payload");
    let report = output::payload(&image, &keys, &tmp.path().join(PAYLOAD))?;
    progress("writing the disk image");
    output::disk(&image, &tmp.path().join(DISK_IMAGE), opts)?;
    let release = Release {
        version: opts.version.clone(),
        kernel_version: kernel.version.clone(),
        root_hash: body.root_hash,
        usr_fs_bytes,
        usr_image_bytes,
        usr_image_sha256: hex::encode(report.image_sha256),
        payload_bytes: report.payload_len,
        payload_sha256: hex::encode(report.payload_sha256),
        slot_size: opts.slot_size,
        initramfs_modules: modules,
        factory_rules,
    };
    output::finish(tmp, &release, &opts.out_dir)?;
    Ok(release)
}

fn load_keys(paths: &[PathBuf]) -> Result<Vec<RsaPrivateKey>> {
    if paths.is_empty() {
        return Err(ImageError::Invalid(
            "no signing key: a release needs --key release.pem (the boot chain and the engine \
             refuse unsigned releases; `fastpatch keygen` makes a key pair)"
                .into(),
        ));
    }
    paths
        .iter()
        .map(|p| fastpatch_payload::keys::load_private_key(p).map_err(ImageError::from))
        .collect()
}

fn check_out_dir(out: &Path, force: bool) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Err(_) => Ok(()),
        Ok(_) if force => Ok(()),
        Ok(_) => Err(ImageError::Invalid(format!(
            "{} exists; choose another output directory or pass --force to replace it",
            out.display()
        ))),
    }
}

fn file_len(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .map_err(io_err(format!("reading {}", path.display())))?
        .len())
}

/// The slot's initramfs: the init and the modules it needs, from the tree's kernel.
fn write_slot_initramfs(kernel: &kernel::Kernel, init: &Path, out: &Path) -> Result<Vec<String>> {
    let init = std::fs::read(init).map_err(io_err(format!(
        "reading the slot init {} (the static fastpatch-boot-init; --init)",
        init.display()
    )))?;
    let mut contents = initramfs::Contents {
        init,
        ..Default::default()
    };
    for rel in kernel::module_closure(kernel, &kernel::INITRAMFS_MODULES)? {
        contents.modules.push(kernel::read_module(kernel, &rel)?);
    }
    initramfs::write(out, &contents)?;
    Ok(contents.modules.iter().map(|(n, _)| n.clone()).collect())
}
