//! `fastpatch cgpt`: the subset of ChromeOS `cgpt` that Flatcar uses, over fastpatch-disk.

use std::path::{Path, PathBuf};

use crate::{
    describe_type, parse_type, partition_path, split_partition_path, Disk, OpenMode, Partition,
    SlotAttrs,
};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

#[derive(Args)]
#[command(about = "Inspect and change GPT slot attributes (cgpt-compatible subset)")]
pub struct CgptArgs {
    #[command(subcommand)]
    command: CgptCommand,
}

/// A disk image or block device, or a partition device such as /dev/vda4 (then -i is implied).
#[derive(Args)]
struct Target {
    /// Partition number (1-based).
    #[arg(short = 'i', value_name = "N")]
    index: Option<u32>,
    /// Disk image, block device, or partition device (/dev/vda4).
    #[arg(value_name = "DRIVE")]
    drive: PathBuf,
}

impl Target {
    /// The disk path and, when given or implied by a partition path, the partition number.
    fn resolve(&self) -> Result<(PathBuf, Option<u32>)> {
        if self.drive.is_file() {
            return Ok((self.drive.clone(), self.index));
        }
        match split_partition_path(&self.drive) {
            Some((disk, n)) => {
                if let Some(i) = self.index {
                    if i != n {
                        bail!(
                            "-i {i} contradicts partition path {} (partition {n})",
                            self.drive.display()
                        );
                    }
                }
                Ok((disk, Some(n)))
            }
            None => Ok((self.drive.clone(), self.index)),
        }
    }

    fn require_index(&self) -> Result<(PathBuf, u32)> {
        match self.resolve()? {
            (disk, Some(i)) => Ok((disk, i)),
            (_, None) => {
                bail!("a partition number is required: -i N, or a partition path like /dev/vda4")
            }
        }
    }
}

#[derive(Subcommand)]
enum CgptCommand {
    /// Show the partition table, one partition, or one field of it.
    Show {
        #[command(flatten)]
        target: Target,
        /// Print only the priority.
        #[arg(short = 'P', group = "field")]
        priority: bool,
        /// Print only the tries count.
        #[arg(short = 'T', group = "field")]
        tries: bool,
        /// Print only the successful flag.
        #[arg(short = 'S', group = "field")]
        successful: bool,
        /// Print only the partition's unique GUID.
        #[arg(short = 'u', group = "field")]
        unique: bool,
        /// Print only the partition's type GUID.
        #[arg(short = 't', group = "field")]
        type_guid: bool,
        /// Print only the partition label.
        #[arg(short = 'l', group = "field")]
        label: bool,
        /// Print only the first sector.
        #[arg(short = 'b', group = "field")]
        begin: bool,
        /// Print only the size in sectors.
        #[arg(short = 's', group = "field")]
        size: bool,
    },
    /// Set a partition's priority, tries and successful attributes.
    Add {
        #[command(flatten)]
        target: Target,
        /// Priority 0-15 (0 = never boot).
        #[arg(short = 'P', value_parser = clap::value_parser!(u8).range(0..=15))]
        priority: Option<u8>,
        /// Boot attempts left, 0-15.
        #[arg(short = 'T', value_parser = clap::value_parser!(u8).range(0..=15))]
        tries: Option<u8>,
        /// Successful flag, 0 or 1.
        #[arg(short = 'S', value_parser = clap::value_parser!(u8).range(0..=1))]
        successful: Option<u8>,
    },
    /// Put a USR partition alone at the top priority, re-ranking the others below it.
    Prioritize {
        #[command(flatten)]
        target: Target,
        /// Highest priority to use (1-15); default: the number of ranks.
        #[arg(short = 'P', value_parser = clap::value_parser!(u8).range(1..=15))]
        max: Option<u8>,
    },
    /// Print the partitions of a type (flatcar-usr, coreos-usr, a GUID, ...) or unique GUID.
    Find {
        /// Partition type: alias or GUID.
        #[arg(short = 't', value_name = "TYPE")]
        type_name: Option<String>,
        /// Unique partition GUID.
        #[arg(short = 'u', value_name = "GUID")]
        unique: Option<String>,
        /// Disks to search; default: every block device.
        drives: Vec<PathBuf>,
    },
    /// Run the boot choice (gptprio.next): pick the slot, spend one try, print its GUID.
    Next {
        /// Disk image or block device.
        drive: PathBuf,
    },
    /// Rebuild a corrupt or stale primary/backup GPT from the sound copy.
    Repair {
        /// Disk image or block device.
        drive: PathBuf,
    },
}

pub fn run(args: CgptArgs) -> Result<()> {
    match args.command {
        CgptCommand::Show {
            target,
            priority,
            tries,
            successful,
            unique,
            type_guid,
            label,
            begin,
            size,
        } => {
            let (path, index) = target.resolve()?;
            let disk = open(&path, OpenMode::ReadOnly)?;
            warn_if_unhealthy(&disk);
            let Some(index) = index else {
                print!("{}", render_table(&disk));
                return Ok(());
            };
            let p = disk.partition(index)?;
            let value = if priority {
                p.attrs.priority.to_string()
            } else if tries {
                p.attrs.tries.to_string()
            } else if successful {
                u8::from(p.attrs.successful).to_string()
            } else if unique {
                p.unique_guid.to_string().to_uppercase()
            } else if type_guid {
                p.type_guid.to_string().to_uppercase()
            } else if label {
                p.name.clone()
            } else if begin {
                p.first_lba.to_string()
            } else if size {
                (p.last_lba - p.first_lba + 1).to_string()
            } else {
                print!("{}", render_partition(&p));
                return Ok(());
            };
            println!("{value}");
            Ok(())
        }
        CgptCommand::Add {
            target,
            priority,
            tries,
            successful,
        } => {
            let (path, index) = target.require_index()?;
            let mut disk = open(&path, OpenMode::ReadWrite)?;
            let mut attrs = disk.partition(index)?.attrs;
            if priority.is_none() && tries.is_none() && successful.is_none() {
                bail!("nothing to change: give -P, -T and/or -S");
            }
            attrs.priority = priority.unwrap_or(attrs.priority);
            attrs.tries = tries.unwrap_or(attrs.tries);
            attrs.successful = successful.map_or(attrs.successful, |s| s == 1);
            disk.set_attrs(index, attrs)
                .with_context(|| format!("cannot set attributes of partition {index}"))?;
            tracing::info!(disk = %path.display(), index, %attrs, "attributes set");
            Ok(())
        }
        CgptCommand::Prioritize { target, max } => {
            let (path, index) = target.require_index()?;
            let mut disk = open(&path, OpenMode::ReadWrite)?;
            disk.prioritize(index, max)
                .with_context(|| format!("cannot prioritize partition {index}"))?;
            Ok(())
        }
        CgptCommand::Find {
            type_name,
            unique,
            drives,
        } => find(type_name, unique, drives),
        CgptCommand::Next { drive } => {
            let mut disk = open(&drive, OpenMode::ReadWrite)?;
            match disk.boot_next()? {
                Some((p, choice)) => {
                    eprintln!(
                        "next: partition {} ({}) priority={} tries={}->{} successful={}",
                        p.index,
                        p.name,
                        choice.before.priority,
                        choice.before.tries,
                        choice.after.tries,
                        u8::from(choice.before.successful)
                    );
                    println!("{}", p.unique_guid);
                    Ok(())
                }
                None => bail!("{}: no bootable USR partition (none has priority > 0 with tries left or successful)", drive.display()),
            }
        }
        CgptCommand::Repair { drive } => {
            let disk = Disk::open(&drive, OpenMode::ReadOnly)
                .with_context(|| format!("cannot read the GPT of {}", drive.display()))?;
            if disk.health().is_clean() {
                println!(
                    "{}: both GPT copies are valid; nothing to repair",
                    drive.display()
                );
                return Ok(());
            }
            let what = disk.health().describe();
            drop(disk);
            open(&drive, OpenMode::ReadWrite)?; // opening read-write repairs
            println!("{}: repaired: {what}", drive.display());
            Ok(())
        }
    }
}

fn open(path: &Path, mode: OpenMode) -> Result<Disk> {
    Ok(Disk::open(path, mode)?)
}

fn warn_if_unhealthy(disk: &Disk) {
    if !disk.health().is_clean() {
        eprintln!(
            "WARNING: {}: {} (run `fastpatch cgpt repair {}`)",
            disk.path().display(),
            disk.health().describe(),
            disk.path().display()
        );
    }
}

fn find(type_name: Option<String>, unique: Option<String>, drives: Vec<PathBuf>) -> Result<()> {
    let want_type = match &type_name {
        Some(t) => Some(parse_type(t).with_context(|| format!("unknown partition type {t:?}"))?),
        None => None,
    };
    let want_unique = match &unique {
        Some(u) => Some(uuid_parse(u)?),
        None => None,
    };
    if want_type.is_none() && want_unique.is_none() {
        bail!("give -t TYPE or -u GUID");
    }
    let explicit = !drives.is_empty();
    let drives = if explicit {
        drives
    } else {
        all_block_devices()
    };
    let mut hits = 0;
    for drive in drives {
        let disk = match Disk::open(&drive, OpenMode::ReadOnly) {
            Ok(d) => d,
            Err(e) if explicit => return Err(e.into()),
            Err(_) => continue, // scanning: disks without a GPT are not ours to report
        };
        for p in disk.partitions() {
            if want_type.is_some_and(|t| t != p.type_guid)
                || want_unique.is_some_and(|u| u != p.unique_guid)
            {
                continue;
            }
            println!("{}", partition_path(&drive, p.index).display());
            hits += 1;
        }
    }
    if hits == 0 {
        bail!("no matching partition found");
    }
    Ok(())
}

fn uuid_parse(text: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::parse_str(text).with_context(|| format!("{text:?} is not a GUID"))
}

fn all_block_devices() -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = dir
        .flatten()
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect();
    out.sort();
    out
}

fn render_partition(p: &Partition) -> String {
    let pad = " ".repeat(34);
    let mut s = format!(
        "{:>12}{:>12}{:>8}  Label: \"{}\"\n",
        p.first_lba,
        p.last_lba - p.first_lba + 1,
        p.index,
        p.name
    );
    s += &format!("{pad}Type: {}\n", describe_type(&p.type_guid));
    s += &format!("{pad}UUID: {}\n", p.unique_guid.to_string().to_uppercase());
    if p.is_usr() || p.attrs != SlotAttrs::default() {
        s += &format!("{pad}Attr: {}\n", p.attrs);
    }
    s
}

fn render_table(disk: &Disk) -> String {
    let mut s = format!("{:>12}{:>12}{:>8}  contents\n", "start", "size", "part");
    s += &format!("{:>12}{:>12}{:>8}  PMBR\n", 0, 1, "");
    s += &format!("{:>12}{:>12}{:>8}  Pri GPT header\n", 1, 1, "");
    for p in disk.partitions() {
        s += &render_partition(&p);
    }
    s += &format!(
        "{:>12}{:>12}{:>8}  Sec GPT header\n",
        disk.size_bytes() / disk.sector_size() - 1,
        1,
        ""
    );
    s
}
