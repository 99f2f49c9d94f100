//! `fastpatch cgpt`: placeholder until the disk layer lands.
use anyhow::Result;

#[derive(clap::Args)]
pub struct CgptArgs {}

pub fn run(_args: CgptArgs) -> Result<()> {
    anyhow::bail!("not implemented yet")
}
