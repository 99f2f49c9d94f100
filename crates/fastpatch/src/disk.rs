//! `fastpatch disk`: placeholder until the disk layer lands.
use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum DiskCommand {
    /// Create a test disk image.
    Create,
}

pub fn run(_cmd: DiskCommand) -> Result<()> {
    anyhow::bail!("not implemented yet")
}
