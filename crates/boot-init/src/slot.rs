//! The pure parts of booting the chosen slot's own kernel with /usr under dm-verity (see the
//! crate docs for the two stages): the command line the chooser hands to the slot's kernel,
//! what the slot stage reads back from it, and the device-mapper ioctl buffers that create the
//! verity device.
//!
//! Stage 1 (`fastpatch.kexec=1`, the stable chooser initramfs): after the gptprio choice it
//! checks the slot's seal with the release keys in its initramfs, maps /usr through dm-verity,
//! loads `/usr/boot/vmlinuz` and `/usr/boot/initramfs.img` with `kexec_file_load` and starts
//! them with [`slot_cmdline`]. Stage 2 (`verity.usrhash=` present, the slot's initramfs): maps
//! the partition named by `verity.usr=PARTUUID=` through dm-verity with that root hash, mounts
//! ROOT as the new root and /usr in it, populates a first boot's /etc and /var from
//! `/usr/share/factory`, and `switch_root`s into systemd.

use fastpatch_boot_control::{refused_word, Slot, REFUSED_KEY};

/// The kernel command line keys of the slot stage (Flatcar's names).
pub const USR_KEY: &str = "verity.usr=PARTUUID=";
pub const USRHASH_KEY: &str = "verity.usrhash=";
/// The init stage 2 executes in the new root (`fastpatch.init=` overrides it).
pub const DEFAULT_INIT: &str = "/usr/lib/systemd/systemd";
/// The dm device name of the verified /usr.
pub const DM_NAME: &str = "usr";
/// The dm device name of the next slot's /usr while `fastpatch boot kexec` loads its kernel
/// on a running machine (whose own /usr is [`DM_NAME`]).
pub const NEXT_DM_NAME: &str = "usr-next";

/// What stage 2 reads from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStage {
    /// The USR partition's unique GUID (lowercase).
    pub partuuid: String,
    /// The dm-verity root hash the chooser verified (lowercase hex).
    pub root_hash: String,
}

impl SlotStage {
    /// `Some` when the command line is the one [`slot_cmdline`] wrote.
    pub fn from_cmdline(cmdline: &str) -> Option<SlotStage> {
        let mut partuuid = None;
        let mut root_hash = None;
        for word in cmdline.split_whitespace() {
            if let Some(v) = word.strip_prefix(USR_KEY) {
                partuuid = Some(v.to_ascii_lowercase());
            } else if let Some(v) = word.strip_prefix(USRHASH_KEY) {
                root_hash = Some(v.to_ascii_lowercase());
            }
        }
        Some(SlotStage {
            partuuid: partuuid?,
            root_hash: root_hash?,
        })
    }
}

/// The release's own kernel command line words, relative to USR's root (`/usr/boot/cmdline`;
/// written by `fastpatch image build --cmdline`).
pub const RELEASE_CMDLINE: &str = "boot/cmdline";

/// The command line for the slot's kernel: the chooser's own words, minus those that only the
/// chooser acts on or that the loader added, plus the release's own words (`/usr/boot/cmdline`,
/// read through dm-verity, so as trusted as the kernel), plus the slot's partition and root
/// hash, plus a `fastpatch.refused=` word per slot this chooser refused (so the engine can
/// report it).
pub fn slot_cmdline(
    current: &str,
    release: &str,
    partuuid: &str,
    root_hash: &str,
    refused: &[Slot],
) -> String {
    let mut words: Vec<String> = current
        .split_whitespace()
        .filter(|w| {
            !(w.starts_with("fastpatch.kexec")
                || w.starts_with(REFUSED_KEY)
                || w.starts_with("verity.usr")
                || w.starts_with("BOOT_IMAGE=")
                || w.starts_with("initrd="))
        })
        .chain(
            release
                .split_whitespace()
                .filter(|w| !(w.starts_with("verity.usr") || w.starts_with(REFUSED_KEY))),
        )
        .map(str::to_string)
        .collect();
    words.push(format!("{USR_KEY}{partuuid}"));
    words.push(format!("{USRHASH_KEY}{root_hash}"));
    words.extend(refused.iter().map(|s| refused_word(*s)));
    words.join(" ")
}

/// A running slot's command line as its chooser wrote it, for `fastpatch boot kexec`: the
/// running release's own words (its `/usr/boot/cmdline`) taken out of `current`, so that the
/// next release's words replace them instead of adding to them.
pub fn without_release_words(current: &str, running_release: &str) -> String {
    let release: Vec<&str> = running_release.split_whitespace().collect();
    current
        .split_whitespace()
        .filter(|w| !release.contains(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `struct dm_ioctl` is 312 bytes; its fields at these offsets.
pub const DM_IOCTL_LEN: usize = 312;
const DM_TARGET_SPEC_LEN: usize = 40;
const DM_NAME_AT: usize = 48;
const DM_NAME_LEN: usize = 128;
const DM_UUID_AT: usize = 176;
const DM_UUID_LEN: usize = 129;
/// Room for what the kernel writes back.
pub const DM_BUFFER_LEN: usize = 16 * 1024;
/// `DM_READONLY_FLAG`.
pub const DM_READONLY: u32 = 1;
/// The ioctl numbers: `_IOWR(0xfd, nr, struct dm_ioctl)`.
pub const DM_DEV_CREATE: u64 = dm_iowr(3);
pub const DM_DEV_REMOVE: u64 = dm_iowr(4);
pub const DM_DEV_SUSPEND: u64 = dm_iowr(6);
pub const DM_TABLE_LOAD: u64 = dm_iowr(9);

const fn dm_iowr(nr: u64) -> u64 {
    (3 << 30) | ((DM_IOCTL_LEN as u64) << 16) | (0xfd << 8) | nr
}

/// A `struct dm_ioctl` (interface version 4.0.0) for device `name`, in a buffer of
/// [`DM_BUFFER_LEN`] bytes.
pub fn dm_ioctl(name: &str, flags: u32) -> Result<Vec<u8>, String> {
    if name.is_empty() || name.len() >= DM_NAME_LEN || name.contains('/') {
        return Err(format!("dm device name {name:?} is not valid"));
    }
    let mut buf = vec![0u8; DM_BUFFER_LEN];
    put_u32(&mut buf, 0, 4);
    put_u32(&mut buf, 12, DM_BUFFER_LEN as u32);
    put_u32(&mut buf, 16, DM_IOCTL_LEN as u32);
    put_u32(&mut buf, 28, flags);
    buf[DM_NAME_AT..DM_NAME_AT + name.len()].copy_from_slice(name.as_bytes());
    Ok(buf)
}

/// A device creation for `name` with `uuid` (which names the device's owner to tools).
pub fn dm_create(name: &str, uuid: &str) -> Result<Vec<u8>, String> {
    let mut buf = dm_ioctl(name, 0)?;
    if uuid.len() >= DM_UUID_LEN {
        return Err(format!("dm uuid {uuid:?} is too long"));
    }
    buf[DM_UUID_AT..DM_UUID_AT + uuid.len()].copy_from_slice(uuid.as_bytes());
    Ok(buf)
}

/// The dm uuid of verity device `name`: cryptsetup's form (`CRYPT-VERITY-<id>-<name>`), so
/// `veritysetup status usr` shows the device as the verity device it is, as on Flatcar. The
/// name keeps it unique when one slot is mapped twice (`usr` and `usr-next`).
pub fn verity_uuid(name: &str, root_hash: &str) -> String {
    let id: String = root_hash.chars().take(32).collect();
    format!("CRYPT-VERITY-{id}-{name}")
}

/// A table load for `name`: one target of `sectors` 512-byte sectors from 0, of `kind` (e.g.
/// `verity`) with `params`, read-only.
pub fn dm_table_load(
    name: &str,
    sectors: u64,
    kind: &str,
    params: &str,
) -> Result<Vec<u8>, String> {
    let mut buf = dm_ioctl(name, DM_READONLY)?;
    if kind.len() >= 16 {
        return Err(format!("dm target type {kind:?} is too long"));
    }
    let params_len = (params.len() + 1).next_multiple_of(8);
    if DM_IOCTL_LEN + DM_TARGET_SPEC_LEN + params_len > DM_BUFFER_LEN {
        return Err("dm table parameters are too long".into());
    }
    put_u32(&mut buf, 20, 1);
    let spec = DM_IOCTL_LEN;
    buf[spec + 8..spec + 16].copy_from_slice(&sectors.to_ne_bytes());
    put_u32(
        &mut buf,
        spec + 20,
        (DM_TARGET_SPEC_LEN + params_len) as u32,
    );
    buf[spec + 24..spec + 24 + kind.len()].copy_from_slice(kind.as_bytes());
    let at = spec + DM_TARGET_SPEC_LEN;
    buf[at..at + params.len()].copy_from_slice(params.as_bytes());
    Ok(buf)
}

/// The device number the kernel wrote into a `dm_ioctl` buffer, as (major, minor).
pub fn dm_dev(buf: &[u8]) -> (u32, u32) {
    let dev = u64::from_ne_bytes(buf[40..48].try_into().unwrap_or([0; 8]));
    // The kernel's huge_encode_dev: minor low 8 bits, major 12 bits, minor high bits.
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_adds_its_words_but_not_the_slot_ones() {
        assert_eq!(
            slot_cmdline(
                "console=ttyS0 fastpatch.kexec=1",
                " quiet\nfastpatch.release=2 verity.usrhash=evil fastpatch.refused=USR-A\n",
                "0a-b",
                "cafe",
                &[]
            ),
            "console=ttyS0 quiet fastpatch.release=2 verity.usr=PARTUUID=0a-b verity.usrhash=cafe"
        );
    }

    #[test]
    fn the_slot_cmdline_replaces_the_chooser_words() {
        let line = slot_cmdline(
            "BOOT_IMAGE=/x console=ttyS0 fastpatch.kexec=1 verity.usrhash=old fastpatch.refused=USR-A fastpatch.disk=/dev/vda",
            "",
            "0a-b",
            "cafe",
            &[Slot::B],
        );
        assert_eq!(
            line,
            "console=ttyS0 fastpatch.disk=/dev/vda verity.usr=PARTUUID=0a-b verity.usrhash=cafe fastpatch.refused=USR-B"
        );
        assert_eq!(
            fastpatch_boot_control::refused_slots(&line),
            [Slot::B],
            "the engine reads what the chooser wrote"
        );
        assert_eq!(
            SlotStage::from_cmdline(&line),
            Some(SlotStage {
                partuuid: "0a-b".into(),
                root_hash: "cafe".into()
            })
        );
        assert_eq!(
            SlotStage::from_cmdline("console=ttyS0 verity.usrhash=ab"),
            None
        );
    }

    #[test]
    fn a_kexec_line_carries_the_next_release_words_only() {
        let running = "console=ttyS0 fastpatch.release=1.0.0 quiet systemd.setenv=A=b \
                       verity.usr=PARTUUID=0a verity.usrhash=aa fastpatch.refused=USR-B";
        let base = without_release_words(running, "fastpatch.release=1.0.0\n");
        let line = slot_cmdline(&base, "fastpatch.release=2.0.0", "0b", "bb", &[]);
        assert_eq!(
            line,
            "console=ttyS0 quiet systemd.setenv=A=b fastpatch.release=2.0.0 \
             verity.usr=PARTUUID=0b verity.usrhash=bb"
        );
        assert_eq!(without_release_words("a b", ""), "a b");
    }

    #[test]
    fn ioctl_numbers_and_layout_match_the_kernel_header() {
        // From <linux/dm-ioctl.h> on x86_64: DM_DEV_CREATE = 0xc138fd03, DM_TABLE_LOAD = 0xc138fd09.
        assert_eq!(DM_DEV_CREATE, 0xc138_fd03);
        assert_eq!(DM_DEV_REMOVE, 0xc138_fd04);
        assert_eq!(DM_DEV_SUSPEND, 0xc138_fd06);
        assert_eq!(DM_TABLE_LOAD, 0xc138_fd09);
        let buf = dm_table_load("usr", 16, "verity", "1 a b").unwrap();
        assert_eq!(&buf[0..4], &4u32.to_ne_bytes());
        assert_eq!(&buf[16..20], &312u32.to_ne_bytes());
        assert_eq!(&buf[20..24], &1u32.to_ne_bytes());
        assert_eq!(&buf[28..32], &DM_READONLY.to_ne_bytes());
        assert_eq!(&buf[48..52], b"usr\0");
        assert_eq!(&buf[312 + 8..312 + 16], &16u64.to_ne_bytes());
        assert_eq!(&buf[312 + 20..312 + 24], &48u32.to_ne_bytes());
        assert_eq!(&buf[312 + 24..312 + 31], b"verity\0");
        assert_eq!(&buf[352..358], b"1 a b\0");
        assert!(dm_ioctl("a/b", 0).is_err());
        let create = dm_create("usr", &verity_uuid("usr", &"ab".repeat(32))).unwrap();
        assert_eq!(
            &create[176..176 + 50],
            format!("CRYPT-VERITY-{}-usr\0", "ab".repeat(16)).as_bytes()
        );
    }

    #[test]
    fn device_numbers_decode() {
        let mut buf = vec![0u8; 64];
        // major 254, minor 0x123: huge_encode_dev = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12).
        let dev: u64 = 0x23 | (254 << 8) | (0x100 << 12);
        buf[40..48].copy_from_slice(&dev.to_ne_bytes());
        assert_eq!(dm_dev(&buf), (254, 0x123));
    }
}
