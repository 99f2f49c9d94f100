//! Finding the booted USR partition from the kernel command line.

use uuid::Uuid;

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
