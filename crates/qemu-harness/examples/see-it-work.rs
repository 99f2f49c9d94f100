//! See it work: an A/B update and an automatic rollback on a real boot, in QEMU.
//!
//! `cargo run -p fastpatch-qemu-harness --example see-it-work`
//!
//! 1. boot version 1 from USR-A;
//! 2. stage version 2 on USR-B (tries=1), boot: the chooser spends the try, version 2 passes its
//!    health check and marks itself good;
//! 3. stage version 3 on USR-A, whose health check fails: it boots once, is not marked good and
//!    reboots; the next boot falls back to version 2.
//!
//! Between boots it prints the slot attributes read from the disk image.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fastpatch_disk::{create, Disk, OpenMode, USR_A_INDEX, USR_B_INDEX};
use fastpatch_qemu_harness::{
    boot, format_root, health_file, test_layout, write_usr_image_with, BootOutcome, Lab,
};

fn main() -> Result<()> {
    // The example binary lives in <target>/debug/examples/.
    let exe = std::env::current_exe().context("locating the example binary")?;
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .context("locating the cargo target directory")?;
    println!("preparing QEMU, kernel, static /init and initramfs (first run: a few minutes)...");
    let lab = Lab::get(&target.join("tmp")).map_err(anyhow::Error::msg)?;

    let dir = tempfile::tempdir()?;
    let disk: PathBuf = dir.path().join("disk.img");
    create(&disk, &test_layout(), false)?;
    write_usr_image_with(&disk, USR_A_INDEX, "1", &[health_file(true)])?;
    format_root(&disk, &[])?;
    show_table(&disk, "new disk: version 1 on USR-A")?;

    let mut n = 0;
    let mut boot_once = |title: &str| -> Result<BootOutcome> {
        n += 1;
        println!("\n=== boot {n}: {title}");
        let spec = lab
            .spec(&format!("see-it-work-{n}"), &disk)
            .arg("fastpatch.mark_good=1");
        let o = boot(&spec)?;
        for line in o.log.lines().filter(|l| l.contains("fastpatch-")) {
            println!("  guest | {}", line.trim());
        }
        let ending = if o.rebooted() {
            "the guest rebooted".to_string()
        } else {
            match o.exit() {
                Some(e) => format!("{e:?}"),
                None => bail!("the guest did not finish: {}", o.describe()),
            }
        };
        println!("  -> {ending} after {:.1} s", o.elapsed.as_secs_f64());
        Ok(o)
    };

    boot_once("the installed version")?;
    show_table(&disk, "after boot 1")?;

    write_usr_image_with(&disk, USR_B_INDEX, "2", &[health_file(true)])?;
    Disk::open(&disk, OpenMode::ReadWrite)?.stage(USR_B_INDEX)?;
    show_table(&disk, "version 2 written to USR-B and staged")?;
    boot_once("trial of version 2")?;
    show_table(&disk, "after boot 2")?;

    write_usr_image_with(&disk, USR_A_INDEX, "3", &[health_file(false)])?;
    Disk::open(&disk, OpenMode::ReadWrite)?.stage(USR_A_INDEX)?;
    show_table(&disk, "version 3 (unhealthy) written to USR-A and staged")?;
    boot_once("trial of version 3")?;
    show_table(&disk, "after boot 3")?;
    let o = boot_once("the next boot")?;
    show_table(&disk, "after boot 4")?;
    let version = o.result("os").and_then(|r| r.get("version")).unwrap_or("?");
    println!("\nrunning version {version}: the bad update rolled back by itself.");
    println!("serial logs: {}", lab.log_dir.display());
    Ok(())
}

fn show_table(disk: &Path, title: &str) -> Result<()> {
    let d = Disk::open(disk, OpenMode::ReadOnly)?;
    println!("--- {title}");
    for index in [USR_A_INDEX, USR_B_INDEX] {
        let p = d.partition(index)?;
        println!(
            "  {:<5} priority={} tries={} successful={}",
            p.name,
            p.attrs.priority,
            p.attrs.tries,
            u8::from(p.attrs.successful)
        );
    }
    Ok(())
}
