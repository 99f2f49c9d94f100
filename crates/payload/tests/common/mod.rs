//! The helpers both payload test binaries use (`it` and the fail-point `failpoints`): the
//! test key, images, payloads, disks. What only `it` needs is in `it/common.rs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use fastpatch_boot_control::{GptBootControl, Slot};
use fastpatch_disk::{Disk, LayoutSpec, OpenMode, SlotAttrs, USR_A_INDEX, USR_B_INDEX};
use fastpatch_payload::generate::{self, Compression, GenerateOptions};
use fastpatch_payload::install::{FileRange, InstallOptions, InstallTarget};
use rand::{Rng, RngCore, SeedableRng};
use rsa::{RsaPrivateKey, RsaPublicKey};

pub struct Keys {
    pub private: RsaPrivateKey,
    pub public: RsaPublicKey,
}

impl Keys {
    pub fn generate() -> Keys {
        let private = fastpatch_payload::keys::generate_key().unwrap();
        Keys {
            public: private.to_public_key(),
            private,
        }
    }
}

/// The test key pair, made once per test binary.
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(Keys::generate)
}

/// A USR-like image: random, zero and text blocks in 64 KiB runs.
pub fn make_image(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; size];
    for run in data.chunks_mut(64 << 10) {
        match rng.gen_range(0..3) {
            0 => rng.fill_bytes(run),
            1 => {}
            _ => {
                for (i, b) in run.iter_mut().enumerate() {
                    *b = b"fastpatch text block with some words in it\n"[i % 43];
                }
            }
        }
    }
    fs::write(path, &data).unwrap();
    data
}

pub fn generate(
    image: &Path,
    out: &Path,
    compression: Compression,
    signers: &[RsaPrivateKey],
) -> generate::GenerateReport {
    let opts = GenerateOptions {
        compression,
        flatcar_compatible: compression != Compression::Zstd,
        zstd_level: 3,
    };
    generate::generate(image, signers, out, &opts, &mut |_, _| {}).unwrap()
}

/// A patterned image of `size` bytes (`dir/usr.img`) and its zstd payload signed with the test
/// key (`dir/update.gz`): returns (image bytes, payload bytes).
pub fn signed_zstd_payload(dir: &Path, size: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let img = dir.join("usr.img");
    let image = make_image(&img, size, seed);
    let out = dir.join("update.gz");
    generate(&img, &out, Compression::Zstd, &[keys().private.clone()]);
    (image, fs::read(&out).unwrap())
}

pub fn standard_disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    let spec = LayoutSpec {
        total_size: 160 << 20,
        usr_size: 64 << 20,
        efi_size: 2 << 20,
        oem_size: 2 << 20,
        ..Default::default()
    };
    fastpatch_disk::create(&path, &spec, false).unwrap();
    let mut disk = Disk::open(&path, OpenMode::ReadWrite).unwrap();
    disk.mark_good(USR_A_INDEX).unwrap();
    path
}

/// The USR-B target, obtained through boot control (booted = A).
pub fn slot_b(disk: &Path) -> Arc<dyn InstallTarget> {
    let bc = GptBootControl::new(disk, Slot::A);
    Arc::new(FileRange::slot(disk, &bc, Slot::B).unwrap())
}

pub fn attrs(disk: &Path) -> Vec<(u32, SlotAttrs, u64)> {
    let disk = Disk::open(disk, OpenMode::ReadOnly).unwrap();
    disk.partitions()
        .into_iter()
        .map(|p| (p.index, p.attrs, p.raw_attributes))
        .collect()
}

pub fn read_slot(disk: &Path, index: u32, len: usize) -> Vec<u8> {
    let (off, _) = Disk::open(disk, OpenMode::ReadOnly)
        .unwrap()
        .partition_byte_range(index)
        .unwrap();
    let f = fs::File::open(disk).unwrap();
    let mut buf = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, off).unwrap();
    buf
}

pub fn usr_b() -> u32 {
    USR_B_INDEX
}

pub fn opts(trusted: Vec<RsaPublicKey>) -> InstallOptions {
    InstallOptions::new(trusted)
}
