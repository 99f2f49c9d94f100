//! RSA keys in PEM: private keys as PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`),
//! public keys as SPKI (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`). A trusted key is named by
//! its file or by a directory of `*.pem` files (key sets, for rotation). An unreadable or
//! malformed key is always an error, never a reason to skip a check.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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

/// The `*.pem` files of a key directory, sorted by name.
fn pem_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(|e| key_err(dir, format!("cannot list: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| key_err(dir, format!("cannot list: {e}")))?
            .path();
        if path.extension().is_some_and(|x| x == "pem") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads the keys one path names: a PEM file, or a directory of `*.pem` files.
fn load_path(path: &Path, out: &mut Vec<(PathBuf, RsaPublicKey)>) -> Result<()> {
    if path.is_dir() {
        for file in pem_files(path)? {
            let key = load_public_key(&file)?;
            out.push((file, key));
        }
    } else {
        out.push((path.to_path_buf(), load_public_key(path)?));
    }
    Ok(())
}

/// Loads every trusted key the paths name (files, or directories of `*.pem`), with the file
/// each came from; an empty list, a missing path or any unreadable key is an error.
pub fn load_public_key_files<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<(PathBuf, RsaPublicKey)>> {
    let mut keys = Vec::new();
    for p in paths {
        load_path(p.as_ref(), &mut keys)?;
    }
    if keys.is_empty() {
        return Err(PayloadError::NoTrustedKeys);
    }
    Ok(keys)
}

/// [`load_public_key_files`] without the file names.
pub fn load_public_keys<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<RsaPublicKey>> {
    Ok(load_public_key_files(paths)?
        .into_iter()
        .map(|(_, k)| k)
        .collect())
}

/// The engine's key set: every key in the paths that exist (the vendor key file and key
/// directory under /usr, which each OS version ships, and the admin's directory under /etc),
/// with the file each came from. A path that does not exist is skipped; an unreadable or
/// malformed key is an error; so is a set with no key at all, naming every path looked at.
pub fn load_key_set<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<(PathBuf, RsaPublicKey)>> {
    let mut keys = Vec::new();
    for p in paths {
        let p = p.as_ref();
        if p.exists() {
            load_path(p, &mut keys)?;
        }
    }
    if keys.is_empty() {
        let looked: Vec<String> = paths
            .iter()
            .map(|p| p.as_ref().display().to_string())
            .collect();
        return Err(PayloadError::NoKeysFound(looked.join(", ")));
    }
    Ok(keys)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_key_set_skips_missing_paths_but_never_a_bad_key() {
        let dir = tempfile::tempdir().unwrap();
        let vendor = dir.path().join("update-payload-key.pub.pem");
        let usr_d = dir.path().join("usr-keys.d");
        let etc_d = dir.path().join("etc-keys.d");
        let paths = [vendor.clone(), usr_d.clone(), etc_d.clone()];
        // Nothing there: an error naming every place looked at.
        let err = load_key_set(&paths).unwrap_err().to_string();
        assert!(
            err.contains("usr-keys.d") && err.contains("etc-keys.d"),
            "{err}"
        );
        // Keys from the admin's directory only (no vendor file): fine, with their files.
        std::fs::create_dir(&etc_d).unwrap();
        write_key_pair(&dir.path().join("a.priv"), &etc_d.join("b.pem")).unwrap();
        write_key_pair(&dir.path().join("b.priv"), &etc_d.join("a.pem")).unwrap();
        std::fs::write(etc_d.join("README"), "not a key").unwrap();
        let set = load_key_set(&paths).unwrap();
        let names: Vec<_> = set.iter().map(|(p, _)| p.file_name().unwrap()).collect();
        assert_eq!(names, ["a.pem", "b.pem"]);
        // A malformed key is an error, not a skip.
        std::fs::write(etc_d.join("c.pem"), "garbage").unwrap();
        let err = load_key_set(&paths).unwrap_err().to_string();
        assert!(err.contains("c.pem"), "{err}");
        // The CLI's explicit paths must exist.
        assert!(load_public_keys(&[usr_d]).is_err());
    }
}
