//! The tree's kernel: which version, its image, and the modules the slot's initramfs loads
//! (with their dependencies from `modules.dep`, dependencies first, decompressed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{io_err, run_tool, ImageError, Result};
use crate::source::RootTree;

/// The modules the slot initramfs needs to reach /usr through dm-verity on a virtio or SATA
/// disk and mount ROOT; names built into the kernel are skipped.
pub const INITRAMFS_MODULES: [&str; 8] = [
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "ahci",
    "crc32c_generic",
    "ext4",
    "dm_mod",
    "dm_verity",
];

/// The kernel an image is built with.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub version: String,
    pub image: PathBuf,
    /// `usr/lib/modules/<version>` in the tree.
    pub modules_dir: PathBuf,
}

/// Finds the kernel of `tree`: `wanted`, or the only one there is. The image is
/// `boot/vmlinuz-<version>` or `usr/lib/modules/<version>/vmlinuz`; the modules need
/// `modules.dep` (written by depmod when the kernel package is installed).
pub fn find(tree: &RootTree, wanted: Option<&str>) -> Result<Kernel> {
    let mut versions = BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir(tree.path("boot")) {
        for entry in dir.flatten() {
            if let Some(v) = entry.file_name().to_string_lossy().strip_prefix("vmlinuz-") {
                versions.insert(v.to_string());
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(tree.path("usr/lib/modules")) {
        for entry in dir.flatten() {
            versions.insert(entry.file_name().to_string_lossy().into_owned());
        }
    }
    let version = match (wanted, versions.len()) {
        (Some(v), _) => v.to_string(),
        (None, 0) => {
            return Err(ImageError::Kernel(format!(
                "{}: no kernel (no boot/vmlinuz-* and nothing in usr/lib/modules); install one in \
                 the tree, e.g. mmdebstrap --include=linux-image-amd64",
                tree.input.display()
            )))
        }
        (None, 1) => versions.iter().next().cloned().unwrap_or_default(),
        (None, _) => {
            let list: Vec<&str> = versions.iter().map(String::as_str).collect();
            return Err(ImageError::Kernel(format!(
                "{}: several kernels ({}); choose one with --kernel-version",
                tree.input.display(),
                list.join(", ")
            )));
        }
    };
    let modules_dir = tree.path(&format!("usr/lib/modules/{version}"));
    let image = [
        tree.path(&format!("boot/vmlinuz-{version}")),
        modules_dir.join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .ok_or_else(|| {
        ImageError::Kernel(format!(
            "{}: no kernel image for {version} (neither boot/vmlinuz-{version} nor \
             usr/lib/modules/{version}/vmlinuz)",
            tree.input.display()
        ))
    })?;
    if !modules_dir.join("modules.dep").is_file() {
        return Err(ImageError::Kernel(format!(
            "{}: no modules for kernel {version} (usr/lib/modules/{version}/modules.dep is \
             missing; the kernel's modules must be installed and depmod run)",
            tree.input.display()
        )));
    }
    Ok(Kernel {
        version,
        image,
        modules_dir,
    })
}

/// A module's name as the kernel spells it: file name without `.ko*`, `-` as `_`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// `modules.dep`: module name → (relative path, dependency paths).
fn parse_modules_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (path, deps) = line.split_once(':')?;
            let deps = deps.split_whitespace().map(str::to_string).collect();
            Some((module_name(path), (path.trim().to_string(), deps)))
        })
        .collect()
}

/// The relative paths of `wanted` and everything they depend on, dependencies first. A name
/// that is neither a module nor listed in `modules.builtin` is an error.
pub fn module_closure(kernel: &Kernel, wanted: &[&str]) -> Result<Vec<String>> {
    let read = |name: &str| {
        let p = kernel.modules_dir.join(name);
        std::fs::read_to_string(&p).map_err(io_err(format!("reading {}", p.display())))
    };
    let deps = parse_modules_dep(&read("modules.dep")?);
    let builtin: BTreeSet<String> = read("modules.builtin")
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        let name = name.replace('-', "_");
        if deps.contains_key(&name) {
            visit(&name, &deps, &mut seen, &mut order);
        } else if !builtin.contains(&name) {
            return Err(ImageError::Kernel(format!(
                "kernel {}: module {name} is neither in modules.dep nor built in",
                kernel.version
            )));
        }
    }
    Ok(order)
}

fn visit(
    name: &str,
    deps: &BTreeMap<String, (String, Vec<String>)>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) {
    if !seen.insert(name.to_string()) {
        return;
    }
    if let Some((path, needs)) = deps.get(name) {
        for dep in needs {
            visit(&module_name(dep), deps, seen, order);
        }
        order.push(path.clone());
    }
}

/// A module's bytes, decompressed (`.ko`, `.ko.zst`, `.ko.xz`, `.ko.gz`), and the plain
/// `NAME.ko` file name the initramfs stores it under.
pub fn read_module(kernel: &Kernel, rel: &str) -> Result<(String, Vec<u8>)> {
    let path = kernel.modules_dir.join(rel);
    let bytes = std::fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
    let plain = match Path::new(rel).extension().and_then(|e| e.to_str()) {
        Some("ko") => bytes,
        Some("zst") => zstd::decode_all(&bytes[..])
            .map_err(io_err(format!("decompressing {}", path.display())))?,
        Some("xz") => run_tool(Command::new("xz").arg("-dc").arg(&path))?,
        Some("gz") => run_tool(Command::new("gzip").arg("-dc").arg(&path))?,
        _ => {
            return Err(ImageError::Kernel(format!(
                "{}: not a kernel module file name",
                path.display()
            )))
        }
    };
    let file = rel.rsplit('/').next().unwrap_or(rel);
    let name = format!("{}.ko", file.split(".ko").next().unwrap_or(file));
    Ok((name, plain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_drop_suffixes_and_dashes() {
        assert_eq!(
            module_name("kernel/drivers/md/dm-verity.ko.xz"),
            "dm_verity"
        );
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko"), "ext4");
    }

    #[test]
    fn dependencies_come_first_once() {
        let dep = "kernel/a/dm-verity.ko: kernel/a/dm-bufio.ko kernel/a/dm-mod.ko\n\
                   kernel/a/dm-bufio.ko: kernel/a/dm-mod.ko\nkernel/a/dm-mod.ko:\n";
        let deps = parse_modules_dep(dep);
        let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
        visit("dm_verity", &deps, &mut seen, &mut order);
        visit("dm_mod", &deps, &mut seen, &mut order);
        assert_eq!(
            order,
            [
                "kernel/a/dm-mod.ko",
                "kernel/a/dm-bufio.ko",
                "kernel/a/dm-verity.ko"
            ]
        );
    }
}
