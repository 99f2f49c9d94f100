//! Client-side validation of an update check answer, with update_engine's rules.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::response::{Status, UpdateCheckResponse};

/// update_engine's default when `MaxFailureCountPerUrl` is absent.
pub const DEFAULT_MAX_FAILURE_COUNT_PER_URL: u32 = 10;

/// What a client should do after an update check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    NoUpdate { poll_interval: Option<u64> },
    Update(UpdateOffer),
}

/// A validated update: everything the engine needs to fetch and verify a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateOffer {
    /// `manifest@version`.
    pub version: String,
    /// Full payload URLs (codebase + package name), to be tried in order.
    pub urls: Vec<String>,
    pub package_name: String,
    /// Payload size in bytes (> 0).
    pub size: u64,
    /// SHA-256 of the payload (from `action@sha256`).
    pub sha256: [u8; 32],
    /// SHA-1 from `package@hash` when present and well-formed (informational).
    pub sha1: Option<[u8; 20]>,
    pub poll_interval: Option<u64>,
    pub max_failure_count_per_url: u32,
    pub is_delta_payload: bool,
    pub disable_payload_backoff: bool,
    /// The extra files listed after the payload (Flatcar's system extensions), each under
    /// the same codebases. A listed file without a usable size or `hash_sha256` is left out:
    /// it could not be verified.
    pub extra_files: Vec<OfferedFile>,
}

impl UpdateOffer {
    /// An offer of one payload with update_engine's defaults for everything optional.
    pub fn new(
        version: impl Into<String>,
        urls: Vec<String>,
        package_name: impl Into<String>,
        size: u64,
        sha256: [u8; 32],
    ) -> UpdateOffer {
        UpdateOffer {
            version: version.into(),
            urls,
            package_name: package_name.into(),
            size,
            sha256,
            sha1: None,
            poll_interval: None,
            max_failure_count_per_url: DEFAULT_MAX_FAILURE_COUNT_PER_URL,
            is_delta_payload: false,
            disable_payload_backoff: false,
            extra_files: Vec::new(),
        }
    }

    /// Where an extra file of this offer can be downloaded: each payload URL's codebase
    /// followed by the file's name.
    pub fn urls_of(&self, file: &OfferedFile) -> Vec<String> {
        self.urls
            .iter()
            .filter_map(|u| u.strip_suffix(self.package_name.as_str()))
            .map(|codebase| format!("{codebase}{}", file.name))
            .collect()
    }
}

/// An extra file of an update (a system extension, `oem-<ID>.gz` / `flatcar-<NAME>.gz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedFile {
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
    pub sha1: Option<[u8; 20]>,
}

/// Why an update check answer is not usable (update_engine: "Omaha response invalid").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResponse {
    #[error("updatecheck status {0:?} is neither \"ok\" nor \"noupdate\"")]
    BadStatus(String),
    #[error("no <manifest> in an update")]
    NoManifest,
    #[error("empty manifest version")]
    NoVersion,
    #[error("no <url codebase> in an update")]
    NoUrls,
    #[error("no <package> in an update")]
    NoPackage,
    #[error("empty package name")]
    NoPackageName,
    #[error("package size {0:?} is not a positive integer")]
    BadSize(String),
    #[error("no postinstall action with a sha256")]
    NoSha256,
    #[error("sha256 {0:?} is not base64 of 32 bytes")]
    BadSha256(String),
}

fn decode_fixed<const N: usize>(b64: &str) -> Option<[u8; N]> {
    let bytes = STANDARD.decode(b64.trim()).ok()?;
    bytes.try_into().ok()
}

/// Lower-case hex, as `hash_sha256` carries an extra file's digest.
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A digest of `N` bytes written in hex (2N digits) or standard base64; `None` otherwise.
pub fn decode_digest<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() == 2 * N && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut out = [0u8; N];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        return Some(out);
    }
    decode_fixed(s)
}

impl crate::response::Package {
    /// The `hash_sha256` digest, in hex (Nebraska, ue-rs) or base64; `None` when absent or
    /// not a SHA-256.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.hash_sha256.as_deref().and_then(decode_digest::<32>)
    }

    /// The `hash` (SHA-1) digest, in base64 (update_engine, Nebraska) or hex.
    pub fn sha1(&self) -> Option<[u8; 20]> {
        self.hash.as_deref().and_then(decode_digest::<20>)
    }
}

/// Base64 (standard alphabet, padded) as Omaha carries hashes.
pub fn encode_b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

impl UpdateCheckResponse {
    /// Applies update_engine's rules: status must be `ok` or `noupdate`; an
    /// update needs a manifest version, at least one URL, a first package with
    /// size > 0, and a postinstall action with a base64 SHA-256. Only the first
    /// package is the payload.
    pub fn validate(&self) -> Result<CheckOutcome, InvalidResponse> {
        match &self.status {
            Status::NoUpdate => {
                return Ok(CheckOutcome::NoUpdate {
                    poll_interval: self.poll_interval,
                })
            }
            Status::Ok => {}
            other => return Err(InvalidResponse::BadStatus(other.as_str().to_owned())),
        }
        let manifest = self.manifest.as_ref().ok_or(InvalidResponse::NoManifest)?;
        if manifest.version.trim().is_empty() {
            return Err(InvalidResponse::NoVersion);
        }
        let package = manifest
            .packages
            .first()
            .ok_or(InvalidResponse::NoPackage)?;
        if package.name.is_empty() {
            return Err(InvalidResponse::NoPackageName);
        }
        let size: u64 = package
            .size
            .trim()
            .parse()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| InvalidResponse::BadSize(package.size.clone()))?;
        if self.urls.is_empty() {
            return Err(InvalidResponse::NoUrls);
        }
        let action = manifest
            .actions
            .iter()
            .find(|a| a.event == "postinstall" && a.sha256.is_some())
            .ok_or(InvalidResponse::NoSha256)?;
        let sha_b64 = action.sha256.as_deref().unwrap_or_default();
        let sha256 = decode_fixed::<32>(sha_b64)
            .ok_or_else(|| InvalidResponse::BadSha256(sha_b64.into()))?;
        Ok(CheckOutcome::Update(UpdateOffer {
            version: manifest.version.clone(),
            urls: self
                .urls
                .iter()
                .map(|base| format!("{base}{}", package.name))
                .collect(),
            package_name: package.name.clone(),
            size,
            sha256,
            sha1: package.hash.as_deref().and_then(decode_fixed::<20>),
            poll_interval: self.poll_interval,
            max_failure_count_per_url: action
                .max_failure_count_per_url
                .unwrap_or(DEFAULT_MAX_FAILURE_COUNT_PER_URL),
            is_delta_payload: action.is_delta_payload.unwrap_or(false),
            disable_payload_backoff: action.disable_payload_backoff.unwrap_or(false),
            extra_files: manifest.packages[1..]
                .iter()
                .filter_map(|p| {
                    Some(OfferedFile {
                        name: p.name.clone(),
                        size: p.size.trim().parse().ok().filter(|s: &u64| *s > 0)?,
                        sha256: p.sha256()?,
                        sha1: p.sha1(),
                    })
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod digest_tests {
    use super::*;

    #[test]
    fn a_digest_reads_from_hex_or_base64_and_nothing_else() {
        let d = [0xabu8; 32];
        assert_eq!(decode_digest::<32>(&encode_hex(&d)), Some(d));
        assert_eq!(decode_digest::<32>(&encode_hex(&d).to_uppercase()), Some(d));
        assert_eq!(decode_digest::<32>(&encode_b64(&d)), Some(d));
        assert_eq!(decode_digest::<32>(&encode_hex(&[1u8; 20])), None);
        assert_eq!(decode_digest::<20>(&encode_b64(&[1u8; 32])), None);
        assert_eq!(decode_digest::<32>(&"zz".repeat(32)), None);
        assert_eq!(decode_digest::<32>(""), None);
    }
}
