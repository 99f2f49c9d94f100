//! The command lines over this crate (feature `cli`), which the `fastpatch` binary dispatches
//! to: `fastpatch disk` (test disk images with Flatcar's partition layout) and `fastpatch cgpt`
//! (the subset of ChromeOS `cgpt` that Flatcar uses).

pub mod cgpt;

use std::path::PathBuf;

use crate::LayoutSpec;
use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum DiskCommand {
    /// Create a sparse disk image laid out like Flatcar: 1 EFI-SYSTEM, 2 BIOS-BOOT, 3 USR-A,
    /// 4 USR-B, 6 OEM, 9 ROOT (the rest). USR-A is marked good at priority 1; USR-B is empty.
    Create {
        /// Path of the image to create (refused if it exists, unless --force).
        image: PathBuf,
        /// Total size (e.g. 3G, 512MiB, 1073741824).
        #[arg(long, default_value = "3G", value_parser = parse_bytes)]
        size: u64,
        /// Size of each USR partition.
        #[arg(long, default_value = "1G", value_parser = parse_bytes)]
        usr_size: u64,
        /// Size of the EFI system partition.
        #[arg(long, default_value = "128M", value_parser = parse_bytes)]
        efi_size: u64,
        /// Size of the OEM partition.
        #[arg(long, default_value = "128M", value_parser = parse_bytes)]
        oem_size: u64,
        /// Logical sector size: 512 or 4096.
        #[arg(long, default_value_t = 512)]
        sector_size: u64,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    // "3G" means GiB here, as in sgdisk and truncate.
    parse_size::Config::new()
        .with_binary()
        .parse_size(text)
        .map_err(|e| format!("{text:?} is not a size ({e})"))
}

pub fn run(cmd: DiskCommand) -> Result<()> {
    match cmd {
        DiskCommand::Create {
            image,
            size,
            usr_size,
            efi_size,
            oem_size,
            sector_size,
            force,
        } => {
            let spec = LayoutSpec {
                total_size: size,
                sector_size,
                efi_size,
                usr_size,
                oem_size,
                ..LayoutSpec::default()
            };
            let disk = crate::create(&image, &spec, force)
                .with_context(|| format!("cannot create disk image {}", image.display()))?;
            println!(
                "created {} ({} bytes, {}-byte sectors)",
                image.display(),
                disk.size_bytes(),
                disk.sector_size()
            );
            for p in disk.partitions() {
                let (offset, len) = p.byte_range(disk.sector_size());
                println!(
                    "  {:>2} {:<10} offset {:>12} size {:>12}  {}",
                    p.index, p.name, offset, len, p.attrs
                );
            }
            Ok(())
        }
    }
}
