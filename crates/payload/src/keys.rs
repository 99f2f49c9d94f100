//! RSA keys in PEM: private keys as PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`),
//! public keys as SPKI (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`). A missing or unreadable
//! key is always an error, never a reason to skip a check.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};

use crate::error::{PayloadError, Result};

pub const KEY_BITS: usize = 2048;

fn key_err(path: &Path, reason: impl Into<String>) -> PayloadError {
    PayloadError::Key {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_pem(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| key_err(path, format!("cannot read: {e}")))
}

fn check_size(path: &Path, bits: usize) -> Result<()> {
    if bits < KEY_BITS {
        return Err(key_err(
            path,
            format!("{bits}-bit RSA key; at least {KEY_BITS} bits required"),
        ));
    }
    Ok(())
}

pub fn parse_private_key_pem(pem: &str) -> Option<RsaPrivateKey> {
    RsaPrivateKey::from_pkcs8_pem(pem)
        .ok()
        .or_else(|| RsaPrivateKey::from_pkcs1_pem(pem).ok())
}

pub fn parse_public_key_pem(pem: &str) -> Option<RsaPublicKey> {
    RsaPublicKey::from_public_key_pem(pem)
        .ok()
        .or_else(|| RsaPublicKey::from_pkcs1_pem(pem).ok())
        .or_else(|| parse_private_key_pem(pem).map(|k| k.to_public_key()))
}

pub fn load_private_key(path: &Path) -> Result<RsaPrivateKey> {
    let pem = read_pem(path)?;
    let key = parse_private_key_pem(&pem)
        .ok_or_else(|| key_err(path, "not a PEM RSA private key (PKCS#8 or PKCS#1)"))?;
    check_size(path, key.size() * 8)?;
    Ok(key)
}

/// Loads a public key (a private key file is accepted too; its public half is used).
pub fn load_public_key(path: &Path) -> Result<RsaPublicKey> {
    let pem = read_pem(path)?;
    let key = parse_public_key_pem(&pem)
        .ok_or_else(|| key_err(path, "not a PEM RSA public key (SPKI or PKCS#1)"))?;
    check_size(path, key.size() * 8)?;
    Ok(key)
}

/// Loads every trusted key; an empty list or any unreadable key is an error.
pub fn load_public_keys<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<RsaPublicKey>> {
    if paths.is_empty() {
        return Err(PayloadError::NoTrustedKeys);
    }
    paths.iter().map(|p| load_public_key(p.as_ref())).collect()
}

pub fn generate_key() -> Result<RsaPrivateKey> {
    RsaPrivateKey::new(&mut rsa::rand_core::OsRng, KEY_BITS)
        .map_err(|e| PayloadError::Sign(e.to_string()))
}

pub fn private_key_pem(key: &RsaPrivateKey) -> Result<String> {
    Ok(key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| PayloadError::Sign(e.to_string()))?
        .to_string())
}

pub fn public_key_pem(key: &RsaPublicKey) -> Result<String> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| PayloadError::Sign(e.to_string()))
}

/// Writes a new key pair: the private key (mode 0600, PKCS#8) and its public key (SPKI).
pub fn write_key_pair(private: &Path, public: &Path) -> Result<RsaPrivateKey> {
    let key = generate_key()?;
    let write = |path: &Path, text: &str, mode: u32| -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| key_err(path, format!("cannot create: {e}")))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| key_err(path, format!("cannot write: {e}")))
    };
    write(private, &private_key_pem(&key)?, 0o600)?;
    write(public, &public_key_pem(&key.to_public_key())?, 0o644)?;
    Ok(key)
}
