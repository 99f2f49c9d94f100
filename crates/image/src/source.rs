//! The input root filesystem: a directory, or a tarball (`.tar`, `.tar.zst`) unpacked into the
//! build's work directory. Only what an OS image uses is unpacked (`usr`, `etc`, `var`, `boot`
//! and the top-level links of a merged /usr); the input itself is never changed.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{io_err, ImageError, Result};

/// The top-level entries of a merged-/usr tree that must be links into usr/ (or absent).
pub const MERGED_LINKS: [&str; 4] = ["bin", "sbin", "lib", "lib64"];
/// The top-level directories the builder reads.
const USED_DIRS: [&str; 4] = ["usr", "etc", "var", "boot"];

/// A root filesystem ready to read.
#[derive(Debug)]
pub struct RootTree {
    /// Where the tree is (the input directory, or where the tarball was unpacked).
    pub root: PathBuf,
    /// The name the user gave, for messages.
    pub input: PathBuf,
}

impl RootTree {
    fn err(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Tree {
            tree: self.input.clone(),
            reason: reason.into(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

/// Opens `input`: a directory is used in place; a tarball is unpacked under `work`.
pub fn open(input: &Path, work: &Path) -> Result<RootTree> {
    let meta = std::fs::metadata(input).map_err(io_err(format!("reading {}", input.display())))?;
    let root = if meta.is_dir() {
        input.to_path_buf()
    } else {
        let dest = work.join("rootfs");
        unpack(input, &dest)?;
        dest
    };
    let tree = RootTree {
        root,
        input: input.to_path_buf(),
    };
    check_merged_usr(&tree)?;
    Ok(tree)
}

/// Refuses a tree whose /bin, /sbin, /lib or /lib64 is a real directory: its /usr alone would
/// not be the whole OS.
pub fn check_merged_usr(tree: &RootTree) -> Result<()> {
    let usr = tree.path("usr");
    if !usr.is_dir() {
        return Err(tree.err("no /usr directory: not a root filesystem"));
    }
    for name in MERGED_LINKS {
        let path = tree.path(name);
        match std::fs::symlink_metadata(&path) {
            Err(_) => continue,
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&path)
                    .map_err(io_err(format!("reading {}", path.display())))?;
                let t = target.to_string_lossy();
                if t != format!("usr/{name}") && t != format!("/usr/{name}") {
                    return Err(tree.err(format!(
                        "/{name} links to {t}, not usr/{name}: not a merged-/usr tree"
                    )));
                }
            }
            Ok(_) => {
                return Err(tree.err(format!(
                    "/{name} is a directory, not a link to usr/{name}: not a merged-/usr tree \
                     (make it with mmdebstrap, or install usrmerge)"
                )))
            }
        }
    }
    Ok(())
}

fn unpack(tarball: &Path, dest: &Path) -> Result<()> {
    let file = File::open(tarball).map_err(io_err(format!("opening {}", tarball.display())))?;
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 4];
    reader
        .read_exact(&mut magic)
        .map_err(io_err(format!("reading {}", tarball.display())))?;
    let head = std::io::Cursor::new(magic).chain(reader);
    let stream: Box<dyn Read> = if magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(
            zstd::Decoder::new(head).map_err(io_err(format!("reading {}", tarball.display())))?,
        )
    } else {
        Box::new(head)
    };
    std::fs::create_dir_all(dest).map_err(io_err(format!("creating {}", dest.display())))?;
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    let entries = archive.entries().map_err(io_err(format!(
        "{} is not a tar archive",
        tarball.display()
    )))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err(format!(
            "{} is not a tar archive",
            tarball.display()
        )))?;
        let path = entry
            .path()
            .map_err(io_err(format!("reading an entry of {}", tarball.display())))?
            .into_owned();
        let first = path
            .components()
            .find_map(|c| match c {
                std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                _ => None,
            })
            .unwrap_or_default();
        if USED_DIRS.contains(&first.as_str()) || MERGED_LINKS.contains(&first.as_str()) {
            entry.unpack_in(dest).map_err(io_err(format!(
                "unpacking {} from {}",
                path.display(),
                tarball.display()
            )))?;
        }
    }
    Ok(())
}
