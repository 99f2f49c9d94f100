//! The shared helpers (`tests/common`, which the fail-point binary uses too) and the ones only
//! these tests need.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fastpatch_disk::{Disk, LayoutSpec, OpenMode, USR_A_INDEX};
use fastpatch_payload::format::{encode_header, HEADER_LEN};
use fastpatch_payload::proto::DeltaArchiveManifest;
use fastpatch_payload::signing;
use prost::Message;
use rand::{RngCore, SeedableRng};
use rsa::RsaPrivateKey;
use sha2::{Digest, Sha256};

pub use crate::shared::*;

/// A second key pair, that no install trusts unless a test says so.
pub fn other_keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(Keys::generate)
}

/// Fully random image (incompressible).
pub fn make_random_image(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; size];
    rng.fill_bytes(&mut data);
    fs::write(path, &data).unwrap();
    data
}

/// A Flatcar-layout disk image with the given USR size; USR-A booted and marked good.
pub fn make_disk(path: &Path, usr_size: u64) -> PathBuf {
    let spec = LayoutSpec {
        total_size: 2 * usr_size + (40 << 20),
        usr_size,
        efi_size: 2 << 20,
        oem_size: 2 << 20,
        ..Default::default()
    };
    fastpatch_disk::create(path, &spec, false).unwrap();
    let mut disk = Disk::open(path, OpenMode::ReadWrite).unwrap();
    disk.mark_good(USR_A_INDEX).unwrap();
    path.to_path_buf()
}

/// Splits a payload into (manifest, blobs between manifest and signatures).
pub fn split(payload: &[u8]) -> (DeltaArchiveManifest, Vec<u8>) {
    let mlen = u64::from_be_bytes(payload[12..20].try_into().unwrap()) as usize;
    let start = HEADER_LEN as usize;
    let manifest = DeltaArchiveManifest::decode(&payload[start..start + mlen]).unwrap();
    let blobs_end = start
        + mlen
        + manifest
            .signatures_offset
            .unwrap_or((payload.len() - start - mlen) as u64) as usize;
    (manifest, payload[start + mlen..blobs_end].to_vec())
}

/// Re-assembles a payload from a (possibly edited) manifest and blobs, signed by `signers`.
pub fn assemble(
    mut manifest: DeltaArchiveManifest,
    blobs: &[u8],
    signers: &[RsaPrivateKey],
) -> Vec<u8> {
    if signers.is_empty() {
        manifest.signatures_offset = None;
        manifest.signatures_size = None;
        manifest.noop_operations.clear();
    } else {
        manifest.signatures_offset = Some(blobs.len() as u64);
        manifest.signatures_size = Some(signing::signatures_len(signers));
    }
    let m = manifest.encode_to_vec();
    let mut out = encode_header(m.len() as u64).to_vec();
    out.extend_from_slice(&m);
    out.extend_from_slice(blobs);
    if !signers.is_empty() {
        let digest: [u8; 32] = Sha256::digest(&out).into();
        out.extend_from_slice(&signing::sign(&digest, signers).unwrap());
    }
    out
}

pub fn write(path: &Path, bytes: &[u8]) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
}
