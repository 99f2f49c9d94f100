//! Partition type GUIDs and the names cgpt and Flatcar use for them.

use uuid::{uuid, Uuid};

/// Flatcar / CoreOS USR partition (`flatcar-usr`, `coreos-usr`, `coreos-rootfs`).
pub const USR_TYPE_GUID: Uuid = uuid!("5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6");
/// EFI System Partition.
pub const EFI_SYSTEM_TYPE_GUID: Uuid = uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
/// BIOS boot partition (GRUB core image).
pub const BIOS_BOOT_TYPE_GUID: Uuid = uuid!("21686148-6449-6e6f-744e-656564454649");
/// Flatcar's root partition, grown on first boot (`coreos-resize`).
pub const ROOT_RESIZE_TYPE_GUID: Uuid = uuid!("3884dd41-8582-4404-b9a8-e9b84f2df50e");
/// Flatcar's OEM partition type (`coreos-reserved`'s sibling `oem`).
pub const OEM_TYPE_GUID: Uuid = uuid!("0fc63daf-8483-4772-8e79-3d69d8477de4");

/// Flatcar's fixed partition GUIDs for USR-A and USR-B (kernel command lines refer to them).
pub const FLATCAR_USR_A_GUID: Uuid = uuid!("7130c94a-213a-4e5a-8e26-6cce9662f132");
pub const FLATCAR_USR_B_GUID: Uuid = uuid!("e03dd35c-7c2d-4a47-b3fe-27f15780a57c");

/// Flatcar's partition numbers for the two USR slots.
pub const USR_A_INDEX: u32 = 3;
pub const USR_B_INDEX: u32 = 4;

const ALIASES: &[(&str, Uuid)] = &[
    ("flatcar-usr", USR_TYPE_GUID),
    ("coreos-usr", USR_TYPE_GUID),
    ("coreos-rootfs", USR_TYPE_GUID),
    ("efi", EFI_SYSTEM_TYPE_GUID),
    ("bios-boot", BIOS_BOOT_TYPE_GUID),
    ("coreos-resize", ROOT_RESIZE_TYPE_GUID),
    ("linux", OEM_TYPE_GUID),
];

/// Parses a type given as an alias (`flatcar-usr`) or a GUID string.
pub fn parse_type(text: &str) -> Option<Uuid> {
    let lower = text.to_ascii_lowercase();
    ALIASES
        .iter()
        .find(|(name, _)| *name == lower)
        .map(|(_, guid)| *guid)
        .or_else(|| Uuid::parse_str(text).ok())
}

/// A human name for a type GUID, for `show`.
pub fn describe_type(guid: &Uuid) -> String {
    match *guid {
        USR_TYPE_GUID => "Flatcar USR".to_string(),
        EFI_SYSTEM_TYPE_GUID => "EFI System Partition".to_string(),
        BIOS_BOOT_TYPE_GUID => "BIOS Boot Partition".to_string(),
        ROOT_RESIZE_TYPE_GUID => "Flatcar auto-resize root".to_string(),
        OEM_TYPE_GUID => "Linux data".to_string(),
        other => other.to_string().to_uppercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve() {
        for alias in ["flatcar-usr", "coreos-usr", "coreos-rootfs", "FLATCAR-USR"] {
            assert_eq!(parse_type(alias), Some(USR_TYPE_GUID), "{alias}");
        }
        assert_eq!(
            parse_type("5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6"),
            Some(USR_TYPE_GUID)
        );
        assert_eq!(parse_type("no-such-type"), None);
    }
}
