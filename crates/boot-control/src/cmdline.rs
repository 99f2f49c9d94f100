//! The kernel command line: finding the booted USR partition, and the word the boot chooser
//! leaves when it refused a slot (written by fastpatch-init, read by the engine).

use uuid::Uuid;

use crate::Slot;

/// `fastpatch.refused=USR-B`: the chooser did not boot that slot (its seal or its dm-verity
/// data did not verify) and took it out of the boot order.
pub const REFUSED_KEY: &str = "fastpatch.refused=";

/// The word fastpatch-init adds to the command line of the slot it boots after refusing `slot`.
pub fn refused_word(slot: Slot) -> String {
    format!("{REFUSED_KEY}{}", slot.label())
}

/// The slots this boot's chooser refused, from its `fastpatch.refused=` words (unknown
/// labels are ignored).
pub fn refused_slots(cmdline: &str) -> Vec<Slot> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(REFUSED_KEY))
        .filter_map(Slot::from_label)
        .collect()
}

/// How the command line names the USR partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsrSpec {
    PartUuid(Uuid),
    Device(String),
}

/// Reads `mount.usr=`, `verity.usr=` or `usr=` (Flatcar uses `verity.usr=PARTUUID=…` with
/// `mount.usr=/dev/mapper/usr`), preferring a PARTUUID when several are present.
pub fn booted_partuuid_from_cmdline(cmdline: &str) -> Option<UsrSpec> {
    let mut device = None;
    for word in cmdline.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        if !matches!(key, "mount.usr" | "verity.usr" | "usr") {
            continue;
        }
        if let Some(u) = value
            .strip_prefix("PARTUUID=")
            .or_else(|| value.strip_prefix("/dev/disk/by-partuuid/"))
        {
            if let Ok(u) = Uuid::parse_str(u) {
                return Some(UsrSpec::PartUuid(u));
            }
        } else if value.starts_with("/dev/") && !value.starts_with("/dev/mapper/") {
            device = Some(UsrSpec::Device(value.to_string()));
        }
    }
    device
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_words_round_trip_and_unknown_labels_are_ignored() {
        let line = format!(
            "console=ttyS0 {} {REFUSED_KEY}USR-C {REFUSED_KEY}",
            refused_word(Slot::B)
        );
        assert_eq!(refused_word(Slot::B), "fastpatch.refused=USR-B");
        assert_eq!(refused_slots(&line), [Slot::B]);
        assert_eq!(refused_slots("console=ttyS0"), []);
    }

    #[test]
    fn flatcar_and_plain_forms() {
        let flatcar = "BOOT_IMAGE=/flatcar/vmlinuz-a mount.usr=/dev/mapper/usr verity.usr=PARTUUID=7130c94a-213a-4e5a-8e26-6cce9662f132 rootflags=rw";
        assert_eq!(
            booted_partuuid_from_cmdline(flatcar),
            Some(UsrSpec::PartUuid(fastpatch_disk::FLATCAR_USR_A_GUID))
        );
        assert_eq!(
            booted_partuuid_from_cmdline("console=ttyS0 mount.usr=/dev/vda4"),
            Some(UsrSpec::Device("/dev/vda4".into()))
        );
        assert_eq!(
            booted_partuuid_from_cmdline(
                "usr=/dev/disk/by-partuuid/e03dd35c-7c2d-4a47-b3fe-27f15780a57c"
            ),
            Some(UsrSpec::PartUuid(fastpatch_disk::FLATCAR_USR_B_GUID))
        );
        assert_eq!(booted_partuuid_from_cmdline("root=/dev/vda9 quiet"), None);
    }
}
