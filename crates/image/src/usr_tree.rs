//! The staged /usr of a release: a copy of the tree's /usr plus what makes it a fastpatch OS
//! version: os-release with the version, the slot's kernel and initramfs under `/usr/boot`,
//! the `fastpatch` binary with its shipped units and the payload key it trusts, and the
//! factory copy of /etc and /var with the tmpfiles.d rules that populate ROOT from it.

use std::fmt::Write as _;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use walkdir::WalkDir;

use crate::error::{io_err, run_tool, ImageError, Result};
use crate::source::{RootTree, MERGED_LINKS};

/// Where the slot's kernel and initramfs live inside USR (Flatcar: `/usr/boot/vmlinuz`).
pub const KERNEL_IN_USR: &str = "boot/vmlinuz";
pub const INITRAMFS_IN_USR: &str = "boot/initramfs.img";
/// The factory copies of /etc and /var (systemd's convention).
pub const FACTORY_DIR: &str = "share/factory";
/// The tmpfiles.d rules that populate ROOT from the factory copies.
pub const FACTORY_TMPFILES: &str = "lib/tmpfiles.d/fastpatch-factory.conf";

/// The shipped units (`dist/systemd`) and the `.wants`/`.requires` directory that enables each.
const UNITS: [(&str, &str, &str); 4] = [
    (
        "fastpatch-engine.service",
        include_str!("../../../dist/systemd/fastpatch-engine.service"),
        "multi-user.target.wants",
    ),
    (
        "fastpatch-health-check.service",
        include_str!("../../../dist/systemd/fastpatch-health-check.service"),
        "boot-complete.target.requires",
    ),
    (
        "locksmithd.service",
        include_str!("../../../dist/systemd/locksmithd.service"),
        "multi-user.target.wants",
    ),
    (
        "fastpatch-extensions.service",
        include_str!("../../../dist/systemd/fastpatch-extensions.service"),
        "sysinit.target.wants",
    ),
];

/// Names the fastpatch binary also answers to (it dispatches on argv0), relative to /usr, with
/// the link target: Flatcar's paths for its tools.
const ALIASES: [(&str, &str); 3] = [
    ("bin/update_engine_client", "fastpatch"),
    ("bin/locksmithctl", "fastpatch"),
    ("lib/locksmith/locksmithd", "../../bin/fastpatch"),
];

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
    }
    // A link (or file) of the tree at this path is replaced, never written through.
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path).map_err(io_err(format!("replacing {}", path.display())))?;
    }
    std::fs::write(path, data)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
        .map_err(io_err(format!("writing {}", path.display())))
}

fn link(target: &str, path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
    }
    let _ = std::fs::remove_file(path);
    symlink(target, path).map_err(io_err(format!("linking {}", path.display())))
}

/// Copies `from` to `to` with owners, modes, links, hard links and xattrs (`cp -a`).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    run_tool(
        Command::new("cp")
            .args(["-a", "--reflink=auto", "--no-target-directory"])
            .arg(from)
            .arg(to),
    )
    .map(drop)
}

/// Copies the tree's /usr to `work/usr` and returns that path.
pub fn stage(tree: &RootTree, work: &Path) -> Result<PathBuf> {
    let usr = work.join("usr");
    copy_tree(&tree.path("usr"), &usr)?;
    Ok(usr)
}

/// Checks a version string: what os-release, file names and the Omaha protocol all accept.
pub fn check_version(version: &str) -> Result<()> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
    if ok {
        Ok(())
    } else {
        Err(ImageError::Invalid(format!(
            "version {version:?}: use 1 to 64 letters, digits and . - _ + (e.g. 1.2.0)"
        )))
    }
}

/// The tree's os-release with `VERSION` and `VERSION_ID` set to `version`.
pub fn os_release_with_version(original: &str, version: &str) -> String {
    let mut text = String::new();
    for line in original.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        if key != "VERSION" && key != "VERSION_ID" {
            text.push_str(line);
            text.push('\n');
        }
    }
    let _ = writeln!(text, "VERSION={version}\nVERSION_ID={version}");
    text
}

/// Sets os-release (`/usr/lib/os-release`) to this version.
pub fn set_os_release(usr: &Path, version: &str) -> Result<()> {
    let path = usr.join("lib/os-release");
    let original = std::fs::read_to_string(&path).unwrap_or_default();
    write_file(
        &path,
        os_release_with_version(&original, version).as_bytes(),
        0o644,
    )
}

/// A release's own command line words may not name the verified /usr: the boot chain adds the
/// slot's partition and the root hash its seal signs.
pub fn check_cmdline(cmdline: Option<&str>) -> Result<()> {
    match cmdline {
        Some(words)
            if words
                .split_whitespace()
                .any(|w| w.starts_with("verity.usr")) =>
        {
            Err(ImageError::Invalid(format!(
                "--cmdline {words:?}: verity.usr words are the boot chain's own"
            )))
        }
        _ => Ok(()),
    }
}

/// Puts the slot's kernel and initramfs under `/usr/boot`, and the release's own kernel command
/// line words, if any.
pub fn add_boot(usr: &Path, kernel: &Path, initramfs: &Path, cmdline: Option<&str>) -> Result<()> {
    for (from, rel) in [(kernel, KERNEL_IN_USR), (initramfs, INITRAMFS_IN_USR)] {
        let data = std::fs::read(from).map_err(io_err(format!("reading {}", from.display())))?;
        write_file(&usr.join(rel), &data, 0o644)?;
    }
    check_cmdline(cmdline)?;
    if let Some(words) = cmdline {
        let rel = fastpatch_boot_init::slot::RELEASE_CMDLINE;
        write_file(
            &usr.join(rel),
            format!("{}\n", words.trim()).as_bytes(),
            0o644,
        )?;
    }
    Ok(())
}

/// The D-Bus system policy that lets the engine own `com.coreos.update1` (`dist/dbus`).
const DBUS_POLICY: (&str, &str) = (
    "share/dbus-1/system.d/com.coreos.update1.conf",
    include_str!("../../../dist/dbus/com.coreos.update1.conf"),
);

/// Installs the fastpatch binary (also as `update_engine_client`, `locksmithctl` and
/// locksmithd) and the engine daemon's own binary, their units enabled as shipped, the D-Bus
/// policy, and the release's public key where the engine trusts it.
pub fn add_fastpatch(usr: &Path, binary: &Path, engined: &Path, public_pem: &str) -> Result<()> {
    for (path, name) in [
        (binary, "bin/fastpatch"),
        (engined, "bin/fastpatch-engined"),
    ] {
        let data = std::fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
        write_file(&usr.join(name), &data, 0o755)?;
    }
    for (path, target) in ALIASES {
        link(target, &usr.join(path))?;
    }
    for (name, text, enabled_by) in UNITS {
        write_file(
            &usr.join("lib/systemd/system").join(name),
            text.as_bytes(),
            0o644,
        )?;
        link(
            &format!("../{name}"),
            &usr.join(format!("lib/systemd/system/{enabled_by}/{name}")),
        )?;
    }
    write_file(&usr.join(DBUS_POLICY.0), DBUS_POLICY.1.as_bytes(), 0o644)?;
    let key = fastpatch_boot_init::ENGINE_TRUSTED_KEY.trim_start_matches("/usr/");
    write_file(&usr.join(key), public_pem.as_bytes(), 0o644)
}

/// A path tmpfiles.d can take without quoting.
fn plain_path(rel: &str) -> bool {
    !rel.is_empty()
        && rel
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '\\' && c != '"' && c != '\'')
}

/// Copies the tree's /etc and /var to `/usr/share/factory` and writes the tmpfiles.d rules that
/// copy each entry to ROOT when it is missing there: a first boot gets all of them, a machine
/// that already has a ROOT gets only what is new in this version (its own files are never
/// replaced). The top-level links of a merged /usr are restored the same way. Returns the
/// number of rules.
pub fn add_factory(tree: &RootTree, usr: &Path) -> Result<usize> {
    let mut rules = String::from(
        "# Made by `fastpatch image build`: populates ROOT from /usr/share/factory. Each entry is\n\
         # copied only when missing, so local changes survive and new defaults arrive.\n",
    );
    for name in MERGED_LINKS {
        if std::fs::symlink_metadata(tree.path(name)).is_ok() {
            let _ = writeln!(rules, "L /{name} - - - - usr/{name}");
        }
    }
    let mut count = 0;
    for top in ["etc", "var"] {
        let from = tree.path(top);
        if !from.is_dir() {
            continue;
        }
        let factory = usr.join(FACTORY_DIR).join(top);
        if let Some(parent) = factory.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("creating {}", parent.display())))?;
        }
        copy_tree(&from, &factory)?;
        for entry in WalkDir::new(&factory).min_depth(1).sort_by_file_name() {
            let entry = entry
                .map_err(|e| ImageError::Invalid(format!("walking {}: {e}", factory.display())))?;
            let rel = entry
                .path()
                .strip_prefix(&factory)
                .map_err(|e| ImageError::Invalid(e.to_string()))?
                .to_string_lossy()
                .into_owned();
            if !plain_path(&rel) {
                tracing::warn!("{top}/{rel}: not copied to ROOT (tmpfiles.d cannot name it)");
                continue;
            }
            let _ = writeln!(
                rules,
                "C /{top}/{rel} - - - - /usr/{FACTORY_DIR}/{top}/{rel}"
            );
            count += 1;
        }
    }
    write_file(&usr.join(FACTORY_TMPFILES), rules.as_bytes(), 0o644)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_keeps_the_rest_and_sets_the_version() {
        let text = os_release_with_version(
            "NAME=\"Debian\"\nVERSION=\"12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n",
            "2.0.0",
        );
        assert_eq!(
            text,
            "NAME=\"Debian\"\nID=debian\nVERSION=2.0.0\nVERSION_ID=2.0.0\n"
        );
    }

    #[test]
    fn versions_are_checked() {
        check_version("1.2.0-rc1+b2").unwrap();
        for bad in ["", "1 2", "a\"b", "../x"] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
    }
}
