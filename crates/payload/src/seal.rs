//! The verity seal of a USR image: the dm-verity parameters of the image (root hash, salt,
//! where the hash tree starts) and the release version, signed with the release key. The boot
//! chain reads it from the chosen slot, checks the signature with the key it trusts, and only
//! then sets up dm-verity for /usr with that root hash; the image builder writes it.
//!
//! Layout of a sealed USR image (every offset a multiple of 4096):
//!
//! ```text
//! [0, data_bytes)                      the file system (ext4; its superblock gives data_bytes)
//! [data_bytes, data_bytes + 4096)      the seal block
//! [hash_offset = data_bytes + 4096, …) the dm-verity hash tree (no verity superblock)
//! ```
//!
//! Seal block: `FPSEAL01` (8 bytes), body length (u32 BE), signature length (u32 BE), the body
//! (JSON, [`SealBody`]), the signature blob (the payload's `Signatures` message: RSA PKCS#1 v1.5
//! over the SHA-256 of the body, one entry per signing key), zeros to 4096 bytes.

use std::io::{Read, Seek, SeekFrom};

use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{PayloadError, Result};
use crate::signing::{self, SignatureMatch};

/// The seal's magic and format version.
pub const SEAL_MAGIC: &[u8; 8] = b"FPSEAL01";
/// The size of the seal block.
pub const SEAL_LEN: u64 = 4096;
/// Data and hash block size of the verity tree.
pub const VERITY_BLOCK: u64 = 4096;
const PREFIX_LEN: usize = 16;

/// What the seal states about its image. `data_bytes` and `hash_offset` are byte offsets in
/// the slot; salt and root hash are lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealBody {
    /// The release version (os-release `VERSION` inside the image).
    pub version: String,
    /// Length of the verified file system (a multiple of 4096).
    pub data_bytes: u64,
    /// Where the hash tree starts (`data_bytes + SEAL_LEN`).
    pub hash_offset: u64,
    /// Hash algorithm of the verity tree (`sha256`).
    pub hash_algorithm: String,
    pub salt: String,
    pub root_hash: String,
}

impl SealBody {
    /// The dm-verity data block count.
    pub fn data_blocks(&self) -> u64 {
        self.data_bytes / VERITY_BLOCK
    }

    /// The dm-verity target for a device whose data and hash tree are both on `device`
    /// (version 1 format, 4096-byte blocks, no verity superblock): its length in 512-byte
    /// sectors and its parameters.
    pub fn dm_target(&self, device: &str) -> (u64, String) {
        let params = format!(
            "1 {device} {device} {blk} {blk} {blocks} {hash_start} {alg} {root} {salt}",
            blk = VERITY_BLOCK,
            blocks = self.data_blocks(),
            hash_start = self.hash_offset / VERITY_BLOCK,
            alg = self.hash_algorithm,
            root = self.root_hash,
            salt = self.salt,
        );
        (self.data_bytes / 512, params)
    }

    /// The kernel's dm-verity table line (`dmsetup table` form) for [`SealBody::dm_target`].
    pub fn dm_table(&self, device: &str) -> String {
        let (sectors, params) = self.dm_target(device);
        format!("0 {sectors} verity {params}")
    }

    fn check(&self) -> Result<()> {
        let hex_ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
        let problem = if self.data_bytes == 0 || !self.data_bytes.is_multiple_of(VERITY_BLOCK) {
            Some(format!(
                "data_bytes {} is not a positive multiple of 4096",
                self.data_bytes
            ))
        } else if self.hash_offset != self.data_bytes + SEAL_LEN {
            Some(format!(
                "hash_offset {} is not data_bytes + {SEAL_LEN}",
                self.hash_offset
            ))
        } else if self.hash_algorithm != "sha256" {
            Some(format!(
                "hash algorithm {:?} (only sha256)",
                self.hash_algorithm
            ))
        } else if !hex_ok(&self.root_hash) || !hex_ok(&self.salt) {
            Some("root hash or salt is not hex".to_string())
        } else {
            None
        };
        match problem {
            Some(p) => Err(PayloadError::Seal(p)),
            None => Ok(()),
        }
    }
}

/// Encodes and signs `body` into a seal block of [`SEAL_LEN`] bytes.
pub fn seal(body: &SealBody, keys: &[RsaPrivateKey]) -> Result<Vec<u8>> {
    body.check()?;
    let json = serde_json::to_vec(body).map_err(|e| PayloadError::Seal(e.to_string()))?;
    let sig = signing::sign(&Sha256::digest(&json).into(), keys)?;
    let len = PREFIX_LEN + json.len() + sig.len();
    if len as u64 > SEAL_LEN {
        return Err(PayloadError::Seal(format!(
            "{len} bytes do not fit the {SEAL_LEN}-byte seal block (too many signing keys?)"
        )));
    }
    let mut block = Vec::with_capacity(SEAL_LEN as usize);
    block.extend_from_slice(SEAL_MAGIC);
    block.extend_from_slice(&(json.len() as u32).to_be_bytes());
    block.extend_from_slice(&(sig.len() as u32).to_be_bytes());
    block.extend_from_slice(&json);
    block.extend_from_slice(&sig);
    block.resize(SEAL_LEN as usize, 0);
    Ok(block)
}

/// A seal read from a slot: its body and the signature blob, not yet verified.
#[derive(Debug, Clone)]
pub struct Seal {
    pub body: SealBody,
    body_bytes: Vec<u8>,
    signatures: Vec<u8>,
}

impl Seal {
    /// Parses a seal block.
    pub fn decode(block: &[u8]) -> Result<Seal> {
        if block.len() < PREFIX_LEN || &block[..8] != SEAL_MAGIC {
            return Err(PayloadError::Seal(
                "no seal (the slot holds no sealed USR image)".into(),
            ));
        }
        let word = |at: usize| {
            u32::from_be_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]) as usize
        };
        let (body_len, sig_len) = (word(8), word(12));
        let end = PREFIX_LEN
            .checked_add(body_len)
            .and_then(|n| n.checked_add(sig_len))
            .filter(|&n| n <= block.len())
            .ok_or_else(|| PayloadError::Seal("seal lengths run past its block".into()))?;
        let body_bytes = block[PREFIX_LEN..PREFIX_LEN + body_len].to_vec();
        let body: SealBody = serde_json::from_slice(&body_bytes)
            .map_err(|e| PayloadError::Seal(format!("seal body: {e}")))?;
        body.check()?;
        Ok(Seal {
            body,
            body_bytes,
            signatures: block[PREFIX_LEN + body_len..end].to_vec(),
        })
    }

    /// Checks the signature with the trusted keys; the body may be used only after this.
    pub fn verify(&self, trusted: &[RsaPublicKey]) -> Result<SignatureMatch> {
        signing::verify(
            &Sha256::digest(&self.body_bytes).into(),
            &self.signatures,
            trusted,
        )
        .map_err(|e| match e {
            PayloadError::BadSignature { keys } => PayloadError::Seal(format!(
                "its signature does not verify with any of the {keys} trusted key(s)"
            )),
            other => other,
        })
    }
}

/// The byte length of the ext4 file system at the start of `slot`, from its superblock.
pub fn ext4_bytes<R: Read + Seek>(slot: &mut R) -> Result<u64> {
    let mut sb = [0u8; 1024];
    slot.seek(SeekFrom::Start(1024))
        .and_then(|_| slot.read_exact(&mut sb))
        .map_err(|e| PayloadError::Io {
            context: "reading the file system superblock".into(),
            error: e,
        })?;
    if sb[0x38..0x3a] != [0x53, 0xef] {
        return Err(PayloadError::Seal(
            "the slot does not start with an ext4 file system".into(),
        ));
    }
    let le32 = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]) as u64;
    let log_block = le32(0x18);
    if log_block > 6 {
        return Err(PayloadError::Seal(format!(
            "ext4 block size 2^{} is not plausible",
            10 + log_block
        )));
    }
    let blocks = le32(0x04) | (le32(0x150) << 32);
    Ok(blocks << (10 + log_block))
}

/// Reads the seal of the sealed USR image at the start of `slot` (not yet verified).
pub fn read_seal<R: Read + Seek>(slot: &mut R) -> Result<Seal> {
    let data_bytes = ext4_bytes(slot)?;
    let mut block = vec![0u8; SEAL_LEN as usize];
    slot.seek(SeekFrom::Start(data_bytes))
        .and_then(|_| slot.read_exact(&mut block))
        .map_err(|e| PayloadError::Io {
            context: format!("reading the seal at byte {data_bytes}"),
            error: e,
        })?;
    let seal = Seal::decode(&block)?;
    if seal.body.data_bytes != data_bytes {
        return Err(PayloadError::Seal(format!(
            "the seal covers {} bytes but the file system is {data_bytes}",
            seal.body.data_bytes
        )));
    }
    Ok(seal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> SealBody {
        SealBody {
            version: "1.0.0".into(),
            data_bytes: 8192,
            hash_offset: 8192 + SEAL_LEN,
            hash_algorithm: "sha256".into(),
            salt: "00ff".into(),
            root_hash: "ab".repeat(32),
        }
    }

    #[test]
    fn a_seal_verifies_with_its_key_only() {
        let key = crate::keys::generate_key().unwrap();
        let other = crate::keys::generate_key().unwrap();
        let block = seal(&body(), std::slice::from_ref(&key)).unwrap();
        assert_eq!(block.len() as u64, SEAL_LEN);
        let read = Seal::decode(&block).unwrap();
        assert_eq!(read.body, body());
        read.verify(&[key.to_public_key()]).unwrap();
        let err = read
            .verify(&[other.to_public_key()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("signature does not verify"), "{err}");
    }

    #[test]
    fn a_changed_body_fails_the_signature() {
        let key = crate::keys::generate_key().unwrap();
        let mut block = seal(&body(), std::slice::from_ref(&key)).unwrap();
        // The root hash's first hex digit: "ab…" becomes "bb…", still a valid body.
        let at = block.windows(4).position(|w| w == b"abab").unwrap();
        block[at] = b'b';
        let read = Seal::decode(&block).unwrap();
        assert_ne!(read.body, body());
        assert!(read.verify(&[key.to_public_key()]).is_err());
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = Seal::decode(&[0u8; 4096]).unwrap_err().to_string();
        assert!(err.contains("no seal"), "{err}");
        let mut block = seal(&body(), &[crate::keys::generate_key().unwrap()]).unwrap();
        block[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = Seal::decode(&block).unwrap_err().to_string();
        assert!(err.contains("run past"), "{err}");
    }

    #[test]
    fn the_dm_table_names_blocks_and_hash_start() {
        let t = body().dm_table("/dev/vda3");
        assert_eq!(
            t,
            format!(
                "0 16 verity 1 /dev/vda3 /dev/vda3 4096 4096 2 3 sha256 {} 00ff",
                "ab".repeat(32)
            )
        );
    }
}
