//! `fastpatch payload sign`: the same payload, signed anew by a set of keys (key rotation).
//!
//! The signature block's length is recorded in the manifest, and the manifest is part of what
//! is signed. So adding a key means signing again with every key that should sign. Only a
//! payload that already verifies with one of the given keys can be re-signed: the operations,
//! the image and the old signature are all checked first. The operation data is copied byte
//! for byte, and the result is verified again before it replaces `out`.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use prost::Message;
use rsa::RsaPrivateKey;
use sha2::{Digest, Sha256};

use crate::error::{IoContext, PayloadError, Result};
use crate::format::{encode_header, parse_header, BLOCK_SIZE, HEADER_LEN};
use crate::proto::DeltaArchiveManifest;
use crate::{signing, verify};

/// What `resign` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResignReport {
    pub payload_len: u64,
    pub payload_sha256: [u8; 32],
    /// How many signatures the new payload carries (one per key).
    pub signatures: usize,
}

fn refuse(why: impl Into<String>) -> PayloadError {
    PayloadError::Resign(why.into())
}

/// Signs `input` anew with exactly `keys`, writing the result to `out` (which may be `input`).
pub fn resign(input: &Path, keys: &[RsaPrivateKey], out: &Path) -> Result<ResignReport> {
    if keys.is_empty() {
        return Err(refuse("no signing key given"));
    }
    let publics: Vec<_> = keys.iter().map(|k| k.to_public_key()).collect();
    let open = || File::open(input).ctx(|| format!("opening {}", input.display()));
    verify::verify(open()?, &publics).map_err(|e| {
        refuse(format!(
            "{} must already verify with one of the given keys ({e})",
            input.display()
        ))
    })?;

    let mut f = open()?;
    let mut header = [0u8; HEADER_LEN as usize];
    f.read_exact(&mut header)
        .ctx(|| "reading the header".into())?;
    let manifest_len = parse_header(&header)?;
    let mut raw = vec![0u8; manifest_len as usize];
    f.read_exact(&mut raw)
        .ctx(|| "reading the manifest".into())?;
    let mut manifest = DeltaArchiveManifest::decode(raw.as_slice())?;
    let (Some(sig_offset), Some(sig_size)) = (manifest.signatures_offset, manifest.signatures_size)
    else {
        return Err(refuse("the manifest records no signature block"));
    };
    let file_len = f.metadata().ctx(|| "sizing the payload".into())?.len();
    if HEADER_LEN + manifest_len + sig_offset + sig_size != file_len {
        return Err(refuse("the signature block is not the end of the payload"));
    }

    let new_size = signing::signatures_len(keys);
    manifest.signatures_size = Some(new_size);
    for noop in manifest
        .noop_operations
        .iter_mut()
        .filter(|op| op.data_offset == Some(sig_offset))
    {
        noop.data_length = Some(new_size);
        if let Some(extent) = noop.dst_extents.first_mut() {
            extent.num_blocks = Some(new_size.div_ceil(BLOCK_SIZE));
        }
    }
    let manifest_bytes = manifest.encode_to_vec();
    write_signed(&mut f, sig_offset, &manifest_bytes, keys, out, &publics)
}

/// Writes header + manifest + the operation data of `f` (from its current position, `data_len`
/// bytes) + new signatures into a temp file next to `out`, checks it, then renames it.
fn write_signed(
    f: &mut File,
    data_len: u64,
    manifest_bytes: &[u8],
    keys: &[RsaPrivateKey],
    out: &Path,
    publics: &[rsa::RsaPublicKey],
) -> Result<ResignReport> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .ctx(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut signed = Sha256::new();
    let mut whole = Sha256::new();
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        let header = encode_header(manifest_bytes.len() as u64);
        for part in [&header[..], manifest_bytes] {
            signed.update(part);
            whole.update(part);
            w.write_all(part).ctx(|| "writing the manifest".into())?;
        }
        let mut data = Read::take(&mut *f, data_len);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = data
                .read(&mut buf)
                .ctx(|| "reading operation data".into())?;
            if n == 0 {
                break;
            }
            signed.update(&buf[..n]);
            whole.update(&buf[..n]);
            w.write_all(&buf[..n])
                .ctx(|| "writing operation data".into())?;
        }
        let digest: [u8; 32] = signed.finalize().into();
        let sigs = signing::sign(&digest, keys)?;
        whole.update(&sigs);
        w.write_all(&sigs).ctx(|| "writing signatures".into())?;
        w.flush().ctx(|| "writing the payload".into())?;
    }
    let file = tmp.as_file_mut();
    file.sync_all().ctx(|| "syncing the payload".into())?;
    file.seek(SeekFrom::Start(0))
        .ctx(|| "rewinding the new payload".into())?;
    verify::verify(io::BufReader::new(&*file), publics)
        .map_err(|e| refuse(format!("the re-signed payload does not verify ({e})")))?;
    let payload_len = file
        .metadata()
        .ctx(|| "sizing the new payload".into())?
        .len();
    tmp.persist(out).map_err(|e| PayloadError::Io {
        context: format!("moving the payload to {}", out.display()),
        error: e.error,
    })?;
    Ok(ResignReport {
        payload_len,
        payload_sha256: whole.finalize().into(),
        signatures: keys.len(),
    })
}
