//! The image builder's one error type: what is wrong with the input or the build, in words an
//! operator can act on. A build that fails leaves nothing in the output directory.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    /// The root filesystem is not one the builder can turn into an OS image.
    #[error("{tree}: {reason}")]
    Tree { tree: PathBuf, reason: String },
    /// No usable kernel (or no modules for it) in the tree.
    #[error("{0}")]
    Kernel(String),
    /// The sealed USR image does not fit the slot.
    #[error("the USR image is {image} bytes ({image_mib} MiB), bigger than the {slot} byte ({slot_mib} MiB) slot; raise --slot-size or trim /usr", image_mib = .image / (1 << 20), slot_mib = .slot / (1 << 20))]
    TooBig { image: u64, slot: u64 },
    #[error("{command} failed ({status}){}", if .stderr.is_empty() { String::new() } else { format!(": {}", .stderr.trim()) })]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Payload(#[from] fastpatch_payload::PayloadError),
    #[error(transparent)]
    Disk(#[from] fastpatch_disk::DiskError),
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |error| ImageError::Io { what, error }
}

/// Runs a tool to completion and returns its stdout; a non-zero exit is
/// [`ImageError::Command`] with its stderr.
pub(crate) fn run_tool(cmd: &mut std::process::Command) -> Result<Vec<u8>> {
    let command = format!("{cmd:?}");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(io_err(format!("running {command}")))?;
    if !out.status.success() {
        return Err(ImageError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(out.stdout)
}

/// [`run_tool`] for a tool that prints text.
pub(crate) fn run_tool_text(cmd: &mut std::process::Command) -> Result<String> {
    run_tool(cmd).map(|out| String::from_utf8_lossy(&out).into_owned())
}

/// The path of a Debian system tool: /usr/sbin and /sbin are not on every user's PATH.
pub(crate) fn sbin_tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}
