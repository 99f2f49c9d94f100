//! Booting the chosen slot's own kernel with /usr under dm-verity (the I/O of
//! [`fastpatch_boot_init::slot`]): stage 1 kexecs the slot's kernel once its seal verifies;
//! stage 2 maps /usr through dm-verity and switch_roots into systemd.

use std::fs::{self, File};
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use fastpatch_boot_control::Slot;
use fastpatch_boot_init::slot::{SlotStage, DM_NAME};
use fastpatch_boot_init::verity::{self, SlotProblem};
use fastpatch_boot_init::{kexec_reboot, sys};
use fastpatch_boot_init::{result_line, slot_name, BootConfig, ROOT_INDEX};
use fastpatch_disk::{partition_path, Disk, OpenMode, Partition, SlotAttrs};
use fastpatch_payload::seal::{self, Seal};
use rsa::RsaPublicKey;

/// The release keys the chooser trusts, in its initramfs (PEM files).
pub const CHOOSER_KEYS: &str = "/lib/fastpatch/keys";
/// Where stage 1 mounts the verified /usr to read the slot's kernel.
const STAGE1_USR: &str = "/usr";
/// Where stage 2 assembles the new root.
const NEW_ROOT: &str = "/sysroot";

/// The release keys of the chooser. Without them nothing is refused (or booted): a chooser
/// that cannot check seals must not take slots out of the boot order.
pub fn chooser_keys() -> Result<Vec<RsaPublicKey>> {
    fastpatch_payload::keys::load_public_keys(&[CHOOSER_KEYS])
        .with_context(|| format!("loading the release keys in {CHOOSER_KEYS}"))
}

/// Gives a slot whose seal does not verify priority 0, so the chooser falls back.
pub fn refuse_slot(disk_path: &Path, chosen: &Partition, why: &anyhow::Error) -> Result<()> {
    eprintln!(
        "fastpatch-init: USR-{} is not booted: {why:#}",
        slot_name(chosen.index)
    );
    eprintln!(
        "{}",
        result_line("seal-refused", &[("slot", &slot_name(chosen.index))])
    );
    let mut disk = Disk::open(disk_path, OpenMode::ReadWrite)?;
    let attrs = SlotAttrs {
        priority: 0,
        tries: 0,
        ..chosen.attrs
    };
    disk.set_attrs(chosen.index, attrs).with_context(|| {
        format!(
            "taking USR-{} out of the boot order",
            slot_name(chosen.index)
        )
    })
}

/// Maps the slot as /usr's verity device, saying so on the console.
fn map_usr(dev: &Path, seal: &Seal) -> Result<String> {
    let mapped = verity::map_verity(DM_NAME, dev, seal)?;
    eprintln!(
        "fastpatch-init: /usr is {mapped}: dm-verity over {} (root hash {})",
        dev.display(),
        seal.body.root_hash
    );
    Ok(mapped)
}

/// Stage 1: boots the chosen slot's own kernel. Returns only on failure: a slot on its first
/// boot that does not read back whole is [`SlotProblem::Invalid`] (its verity device removed
/// again); anything else is [`SlotProblem::Unreadable`].
pub fn kexec_slot(
    dev: &Path,
    chosen: &Partition,
    seal: &Seal,
    refused: &[Slot],
) -> Result<(), SlotProblem> {
    let mapped = map_usr(dev, seal)?;
    if !chosen.attrs.successful {
        match verity::read_whole(&mapped, seal) {
            Ok(took) => eprintln!(
                "fastpatch-init: first boot of this slot: all {} MiB of /usr verified in {:.1} s",
                seal.body.data_bytes >> 20,
                took.as_secs_f64()
            ),
            Err(why) => {
                verity::unmap_verity(DM_NAME)?;
                return Err(SlotProblem::Invalid(why));
            }
        }
    }
    Ok(kexec_mapped(&mapped, chosen, seal, refused)?)
}

fn kexec_mapped(mapped: &str, chosen: &Partition, seal: &Seal, refused: &[Slot]) -> Result<()> {
    verity::mount_usr(mapped, STAGE1_USR)?;
    let current = fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    kexec_reboot::load_slot_kernel(Path::new(STAGE1_USR), &current, chosen, seal, refused)?;
    eprintln!(
        "{}",
        result_line(
            "kexec",
            &[
                ("slot", &slot_name(chosen.index)),
                ("version", &seal.body.version)
            ]
        )
    );
    Err(sys::reboot_kexec()).context("starting the slot's kernel")
}

/// Stage 2: the slot's own initramfs. Maps /usr, mounts ROOT with /usr in it, populates a
/// first boot, and executes the init of the new root. Returns only on failure.
pub fn run_slot_stage(cfg: &BootConfig, stage: &SlotStage) -> Result<()> {
    let disk_path = Path::new(&cfg.disk);
    let disk = Disk::open(disk_path, OpenMode::ReadOnly)
        .with_context(|| format!("reading the GPT of {}", cfg.disk))?;
    let Some(part) = disk
        .partitions()
        .into_iter()
        .find(|p| p.unique_guid.to_string() == stage.partuuid)
    else {
        bail!(
            "no partition with PARTUUID {} on {}",
            stage.partuuid,
            cfg.disk
        );
    };
    let dev = partition_path(disk_path, part.index);
    let mut f = File::open(&dev).with_context(|| format!("opening {}", dev.display()))?;
    let seal = seal::read_seal(&mut f)?;
    if seal.body.root_hash != stage.root_hash {
        bail!(
            "the seal of {} names root hash {}, the chooser verified {}",
            dev.display(),
            seal.body.root_hash,
            stage.root_hash
        );
    }
    let mapped = map_usr(&dev, &seal)?;
    let root_dev = partition_path(disk_path, cfg.root.unwrap_or(ROOT_INDEX));
    fs::create_dir_all(NEW_ROOT).context("creating /sysroot")?;
    sys::mount(&root_dev.to_string_lossy(), NEW_ROOT, "ext4", 0, None)
        .with_context(|| format!("mounting ROOT {} on {NEW_ROOT}", root_dev.display()))?;
    verity::mount_usr(&mapped, &format!("{NEW_ROOT}/usr"))?;
    populate_root(Path::new(NEW_ROOT))?;
    eprintln!(
        "{}",
        result_line(
            "slot-stage",
            &[
                ("slot", &slot_name(part.index)),
                ("version", &seal.body.version),
                ("usr", &mapped)
            ]
        )
    );
    for api in ["/proc", "/sys", "/dev", "/run"] {
        let target = format!("{NEW_ROOT}{api}");
        fs::create_dir_all(&target).with_context(|| format!("creating {target}"))?;
        sys::move_mount(api, &target).with_context(|| format!("moving {api} to {target}"))?;
    }
    sys::switch_root(NEW_ROOT).context("switching to the new root")?;
    let err = std::process::Command::new(&cfg.init).exec();
    Err(err).with_context(|| format!("executing {}", cfg.init))
}

/// A first boot's ROOT: the merged-/usr links, and /etc and /var from the factory copies when
/// they are missing (later versions' additions arrive through tmpfiles.d).
fn populate_root(root: &Path) -> Result<()> {
    for name in ["bin", "sbin", "lib", "lib64"] {
        let link = root.join(name);
        if fs::symlink_metadata(&link).is_err() && root.join("usr").join(name).exists() {
            symlink(format!("usr/{name}"), &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    for dir in ["etc", "var"] {
        let factory = root.join("usr/share/factory").join(dir);
        let target = root.join(dir);
        if !target.exists() && factory.is_dir() {
            copy_tree(&factory, &target)
                .with_context(|| format!("populating /{dir} from the factory copy"))?;
            eprintln!("fastpatch-init: first boot: /{dir} populated from /usr/share/factory/{dir}");
        }
    }
    for dir in ["proc", "sys", "dev", "run", "tmp"] {
        fs::create_dir_all(root.join(dir)).with_context(|| format!("creating /{dir}"))?;
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))
        .context("setting /tmp's mode")?;
    Ok(())
}

/// Copies a directory tree with modes, owners and symbolic links (owner first: a chown clears
/// set-id bits, so the mode is set after it).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        symlink(fs::read_link(from)?, to)?;
        return lchown(to, Some(meta.uid()), Some(meta.gid()));
    }
    if meta.is_dir() {
        fs::create_dir(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if meta.is_file() {
        fs::copy(from, to)?;
    } else {
        // Device nodes and sockets have no place in a factory copy.
        return Ok(());
    }
    lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    fs::set_permissions(to, meta.permissions())
}
