//! Sealing a USR image: the dm-verity hash tree (Debian's `veritysetup`, no verity superblock)
//! after the seal block, and the signed seal (`fastpatch_payload::seal`) that binds the root
//! hash to the release. [`check`] is the same verification the boot chain does.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use fastpatch_payload::seal::{self, Seal, SealBody, SEAL_LEN, VERITY_BLOCK};
use rsa::{RsaPrivateKey, RsaPublicKey};

use crate::error::{io_err, run_tool_text, sbin_tool, ImageError, Result};

/// The value of a `Name: value` line of veritysetup's output.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().strip_prefix(':'))
        .map(str::trim)
}

/// Appends the seal block and the hash tree to the file system image `image` (which holds
/// exactly the file system) and returns the sealed parameters.
pub fn seal_image(image: &Path, version: &str, keys: &[RsaPrivateKey]) -> Result<SealBody> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(io_err(format!("opening {}", image.display())))?;
    let data_bytes = seal::ext4_bytes(&mut f)?;
    let hash_offset = data_bytes + SEAL_LEN;
    f.set_len(hash_offset)
        .map_err(io_err(format!("extending {}", image.display())))?;
    let out = run_tool_text(
        Command::new(sbin_tool("veritysetup"))
            .args(["format", "--no-superblock", "--hash=sha256"])
            .arg(format!("--data-block-size={VERITY_BLOCK}"))
            .arg(format!("--hash-block-size={VERITY_BLOCK}"))
            .arg(format!("--data-blocks={}", data_bytes / VERITY_BLOCK))
            .arg(format!("--hash-offset={hash_offset}"))
            .arg(image)
            .arg(image),
    )?;
    let (Some(root_hash), Some(salt)) = (field(&out, "Root hash"), field(&out, "Salt")) else {
        return Err(ImageError::Invalid(format!(
            "veritysetup format printed no root hash and salt:\n{out}"
        )));
    };
    let body = SealBody {
        version: version.to_string(),
        data_bytes,
        hash_offset,
        hash_algorithm: "sha256".into(),
        salt: salt.to_string(),
        root_hash: root_hash.to_string(),
    };
    let block = seal::seal(&body, keys)?;
    f.seek(SeekFrom::Start(data_bytes))
        .and_then(|_| f.write_all(&block))
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("writing the seal of {}", image.display())))?;
    Ok(body)
}

/// Checks a sealed USR image (a file or a slot): the seal's signature with `trusted`, then
/// every data block against the hash tree (`veritysetup verify`). Returns the seal.
pub fn check(slot: &Path, trusted: &[RsaPublicKey]) -> Result<Seal> {
    let mut f = std::fs::File::open(slot).map_err(io_err(format!("opening {}", slot.display())))?;
    let seal = seal::read_seal(&mut f)?;
    seal.verify(trusted)?;
    let b = &seal.body;
    run_tool_text(
        Command::new(sbin_tool("veritysetup"))
            .args(["verify", "--no-superblock", "--hash=sha256"])
            .arg(format!("--data-block-size={VERITY_BLOCK}"))
            .arg(format!("--hash-block-size={VERITY_BLOCK}"))
            .arg(format!("--data-blocks={}", b.data_blocks()))
            .arg(format!("--hash-offset={}", b.hash_offset))
            .arg(format!("--salt={}", b.salt))
            .arg(slot)
            .arg(slot)
            .arg(&b.root_hash),
    )
    .map_err(|e| ImageError::Invalid(format!("{}: verity check failed: {e}", slot.display())))?;
    Ok(seal)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_are_read_from_veritysetup_output() {
        let out = "VERITY header information for x\nUUID:            \t\nHash type:       \t1\nSalt:            \tab12\nRoot hash:      \tcd34\n";
        assert_eq!(super::field(out, "Root hash"), Some("cd34"));
        assert_eq!(super::field(out, "Salt"), Some("ab12"));
        assert_eq!(super::field(out, "Nope"), None);
    }
}
