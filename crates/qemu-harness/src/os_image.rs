//! Versions of the test OS for the update scenarios: what each version's USR image holds (its
//! os-release, its health marker, the `fastpatch` binary that runs as the OS, the
//! payload key it trusts, a vendor engine config layer), and the signed update payload made
//! from that image with fastpatch-payload's generator, as a release pipeline would.

use std::path::{Path, PathBuf};

use fastpatch_boot_init::{ENGINE_TRUSTED_KEY, ENGINE_VENDOR_LAYER};
use fastpatch_payload::generate::{generate, GenerateOptions};
use fastpatch_payload::keys;

use crate::{health_file, io_err, make_ext4_image, os_release, FsFile, HarnessError, Result};

/// Where a USR image keeps the engine binary (`/usr/bin/fastpatch` once mounted).
pub const ENGINE_IN_USR: &str = "/usr/bin/fastpatch";

/// The release signing key: payloads are signed with the private half on the host; the public
/// PEM goes into every USR image at the path the engine trusts.
#[derive(Clone)]
pub struct SigningKey {
    private_pem: String,
    public_pem: String,
}

impl SigningKey {
    /// A fresh RSA-2048 key pair.
    pub fn generate() -> Result<SigningKey> {
        let key = keys::generate_key().map_err(payload_err("generating a signing key"))?;
        let private_pem =
            keys::private_key_pem(&key).map_err(payload_err("encoding the private key"))?;
        let public_pem = keys::public_key_pem(&key.to_public_key())
            .map_err(payload_err("encoding the public key"))?;
        Ok(SigningKey {
            private_pem,
            public_pem,
        })
    }

    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// Signs `image` as a full update payload written to `payload` (the OS, or a system
    /// extension's `.raw` image).
    pub fn sign(&self, image: &Path, payload: &Path) -> Result<()> {
        let private = keys::parse_private_key_pem(&self.private_pem)
            .ok_or_else(|| HarnessError::Invalid("the signing key does not parse".into()))?;
        generate(
            image,
            &[private],
            payload,
            &GenerateOptions::default(),
            &mut |_, _| {},
        )
        .map_err(payload_err("generating the payload"))?;
        Ok(())
    }

    /// Writes the private key (PEM) to `path`, for a server that signs deltas with it.
    pub fn write_private_pem(&self, path: &Path) -> Result<()> {
        std::fs::write(path, &self.private_pem)
            .map_err(io_err(format!("writing {}", path.display())))
    }
}

fn payload_err(what: &str) -> impl FnOnce(fastpatch_payload::PayloadError) -> HarnessError + '_ {
    move |e| HarnessError::Invalid(format!("{what}: {e}"))
}

/// Strips the leading `/usr/` of an absolute path under /usr: the path inside a USR image.
fn in_usr(path: &str) -> &str {
    path.trim_start_matches("/usr/")
}

/// One version of the test OS.
#[derive(Debug, Clone)]
pub struct OsVersion {
    /// os-release `VERSION` (what the engine reports to the server).
    pub version: String,
    /// What `/init health` answers in this version.
    pub healthy: bool,
    /// The `fastpatch` binary to ship as [`ENGINE_IN_USR`].
    pub engine: Option<PathBuf>,
    /// The payload key this version trusts (PEM), at the engine's trusted-key path.
    pub trusted_key_pem: Option<String>,
    /// A vendor layer of the engine config (`/usr/lib/fastpatch/engine.d/10-vendor.toml`).
    pub vendor_layer: Option<String>,
    /// Anything else.
    pub extra: Vec<FsFile>,
}

impl OsVersion {
    /// A version with nothing but its os-release and health marker.
    pub fn new(version: &str, healthy: bool) -> OsVersion {
        OsVersion {
            version: version.to_string(),
            healthy,
            engine: None,
            trusted_key_pem: None,
            vendor_layer: None,
            extra: Vec::new(),
        }
    }

    /// A version whose OS is the fastpatch engine at `engine`, trusting `key`.
    pub fn with_engine(version: &str, healthy: bool, engine: &Path, key: &SigningKey) -> OsVersion {
        OsVersion {
            engine: Some(engine.to_path_buf()),
            trusted_key_pem: Some(key.public_pem().to_string()),
            ..OsVersion::new(version, healthy)
        }
    }

    /// The files of the USR image (paths relative to /usr).
    pub fn files(&self) -> Result<Vec<FsFile>> {
        let mut files = vec![os_release(&self.version)?, health_file(self.healthy)];
        if let Some(engine) = &self.engine {
            let bytes =
                std::fs::read(engine).map_err(io_err(format!("reading {}", engine.display())))?;
            files.push(FsFile::new(in_usr(ENGINE_IN_USR), bytes, 0o755));
        }
        if let Some(pem) = &self.trusted_key_pem {
            files.push(FsFile::new(
                in_usr(ENGINE_TRUSTED_KEY),
                pem.as_bytes().to_vec(),
                0o644,
            ));
        }
        if let Some(layer) = &self.vendor_layer {
            files.push(FsFile::new(
                format!("{}/10-vendor.toml", in_usr(ENGINE_VENDOR_LAYER)),
                layer.as_bytes().to_vec(),
                0o644,
            ));
        }
        files.extend(self.extra.iter().cloned());
        Ok(files)
    }

    /// Writes this version's USR image (ext4, exactly `size` bytes: a slot's size) to `out`.
    pub fn write_image(&self, out: &Path, size: u64) -> Result<()> {
        make_ext4_image(out, size, "USR", &self.files()?)
    }

    /// Builds the image (slot-sized) and the signed update payload for it in `dir`; returns
    /// `(image, payload)`.
    pub fn release(&self, key: &SigningKey, size: u64, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let image = dir.join(format!("usr-{}.img", self.version));
        self.write_image(&image, size)?;
        let payload = dir.join(format!("update-{}.gz", self.version));
        key.sign(&image, &payload)?;
        Ok((image, payload))
    }
}
