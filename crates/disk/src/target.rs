//! Naming partitions the way cgpt and the kernel do: `/dev/vda4` ↔ (`/dev/vda`, 4).

use std::path::{Path, PathBuf};

const P_FAMILIES: &[&str] = &["nvme", "mmcblk", "loop", "nbd", "md", "zram"];

/// Splits a partition device path into its disk and partition number, using sysfs when the
/// path is a block device (handles every naming scheme), else the kernel's naming rules
/// (`sda3`, `vda4`, `nvme0n1p4`, `mmcblk0p2`, `loop0p3`).
pub fn split_partition_path(path: &Path) -> Option<(PathBuf, u32)> {
    let name = path.file_name()?.to_str()?;
    if let Some(found) = split_via_sysfs(name) {
        return Some(found);
    }
    if !path.starts_with("/dev") {
        return None;
    }
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || digits == name.len() {
        return None;
    }
    let (stem, num) = name.split_at(name.len() - digits);
    let index: u32 = num.parse().ok()?;
    // `nvme0n1p4`: the disk name ends in a digit, so a `p` separates the partition number.
    let disk = match stem.strip_suffix('p') {
        Some(d) if d.ends_with(|c: char| c.is_ascii_digit()) => d,
        // Families whose disk names end in a digit always use the `p` form; without it the
        // name is a whole disk (nvme0n1, mmcblk0, loop0).
        _ if P_FAMILIES.iter().any(|f| name.starts_with(f)) => return None,
        _ => stem,
    };
    Some((path.with_file_name(disk), index))
}

fn split_via_sysfs(name: &str) -> Option<(PathBuf, u32)> {
    let sys = Path::new("/sys/class/block").join(name);
    let index: u32 = std::fs::read_to_string(sys.join("partition"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let real = std::fs::canonicalize(&sys).ok()?;
    let disk = real.parent()?.file_name()?.to_str()?;
    Some((Path::new("/dev").join(disk), index))
}

/// The device path of partition `index` of `disk` (cgpt `find` prints these).
pub fn partition_path(disk: &Path, index: u32) -> PathBuf {
    let s = disk.as_os_str().to_string_lossy();
    if s.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{s}p{index}"))
    } else {
        PathBuf::from(format!("{s}{index}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names() {
        let cases = [
            ("/dev/vda4", Some(("/dev/vda", 4))),
            ("/dev/sda13", Some(("/dev/sda", 13))),
            ("/dev/nvme0n1p4", Some(("/dev/nvme0n1", 4))),
            ("/dev/mmcblk0p2", Some(("/dev/mmcblk0", 2))),
            ("/dev/nvme0n1", None),
            ("/dev/vda", None),
            ("disk.img", None),
        ];
        for (input, want) in cases {
            let got = split_partition_path(Path::new(input));
            let want = want.map(|(d, i)| (PathBuf::from(d), i));
            assert_eq!(got, want, "{input}");
        }
        assert_eq!(
            partition_path(Path::new("/dev/vda"), 3),
            PathBuf::from("/dev/vda3")
        );
        assert_eq!(
            partition_path(Path::new("/dev/nvme0n1"), 3),
            PathBuf::from("/dev/nvme0n1p3")
        );
    }
}
