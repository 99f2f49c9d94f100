//! Payload signatures: RSA PKCS#1 v1.5 over the SHA-256 of bytes [0, signatures start),
//! wrapped in a `Signatures` message with one entry (version 2) per signing key.

use prost::Message;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

use crate::error::{PayloadError, Result};
use crate::format::SIGNATURE_VERSION;
use crate::proto::{signatures::Signature, Signatures};

fn scheme() -> Pkcs1v15Sign {
    Pkcs1v15Sign::new::<Sha256>()
}

/// Length of the Signatures message these keys will produce (known before signing, because
/// the manifest must record it).
pub fn signatures_len(keys: &[RsaPrivateKey]) -> u64 {
    build(keys.iter().map(|k| vec![0u8; k.size()]).collect()).encoded_len() as u64
}

fn build(datas: Vec<Vec<u8>>) -> Signatures {
    Signatures {
        signatures: datas
            .into_iter()
            .map(|data| Signature {
                version: Some(SIGNATURE_VERSION),
                data: Some(data),
            })
            .collect(),
    }
}

pub fn sign(digest: &[u8; 32], keys: &[RsaPrivateKey]) -> Result<Vec<u8>> {
    let mut datas = Vec::with_capacity(keys.len());
    for key in keys {
        datas.push(
            key.sign(scheme(), digest)
                .map_err(|e| PayloadError::Sign(e.to_string()))?,
        );
    }
    Ok(build(datas).encode_to_vec())
}

/// Which signature verified with which trusted key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SignatureMatch {
    pub signature_index: usize,
    pub key_index: usize,
}

/// Checks that at least one version-2 signature verifies with one trusted key.
pub fn verify(digest: &[u8; 32], blob: &[u8], trusted: &[RsaPublicKey]) -> Result<SignatureMatch> {
    if trusted.is_empty() {
        return Err(PayloadError::NoTrustedKeys);
    }
    let sigs =
        Signatures::decode(blob).map_err(|e| PayloadError::BadSignatureBlock(e.to_string()))?;
    if sigs.signatures.is_empty() {
        return Err(PayloadError::BadSignatureBlock("no signatures".into()));
    }
    for (signature_index, sig) in sigs.signatures.iter().enumerate() {
        if sig.version != Some(SIGNATURE_VERSION) {
            continue;
        }
        let Some(data) = sig.data.as_deref() else {
            continue;
        };
        for (key_index, key) in trusted.iter().enumerate() {
            if key.verify(scheme(), digest, data).is_ok() {
                return Ok(SignatureMatch {
                    signature_index,
                    key_index,
                });
            }
        }
    }
    Err(PayloadError::BadSignature {
        keys: trusted.len(),
    })
}
