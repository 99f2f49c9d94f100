//! A small merged-/usr root filesystem with a kernel and modules, the release key, and the
//! tools the checks read images with.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use fastpatch_image::BuildOptions;

pub const KVER: &str = "6.1.0-test";

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

impl Fixture {
    /// The tree under `<dir>/rootfs`, a key pair, an init and a "fastpatch" binary.
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        write(&root.join("usr/bin/hello"), b"#!/bin/sh\necho hello\n");
        write(&root.join("usr/lib/os-release"), b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n");
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib64")).unwrap();
        for name in ["bin", "sbin", "lib", "lib64"] {
            symlink(format!("usr/{name}"), root.join(name)).unwrap();
        }
        write(&root.join(format!("boot/vmlinuz-{KVER}")), &kernel_bytes());
        let m = root.join(format!("usr/lib/modules/{KVER}"));
        let dep = [
            ("kernel/drivers/virtio/virtio.ko", ""),
            (
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/drivers/virtio/virtio.ko",
            ),
            (
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/drivers/virtio/virtio.ko",
            ),
            (
                "kernel/drivers/net/virtio_net.ko",
                "kernel/drivers/virtio/virtio.ko",
            ),
            ("kernel/fs/ext4/ext4.ko", "kernel/lib/crc32c_generic.ko"),
            ("kernel/lib/crc32c_generic.ko", ""),
            ("kernel/drivers/md/dm-mod.ko", ""),
            (
                "kernel/drivers/md/dm-bufio.ko.zst",
                "kernel/drivers/md/dm-mod.ko",
            ),
            (
                "kernel/drivers/md/dm-verity.ko",
                "kernel/drivers/md/dm-bufio.ko.zst kernel/drivers/md/dm-mod.ko",
            ),
        ];
        let mut text = String::new();
        for (path, deps) in dep {
            text.push_str(&format!("{path}: {deps}\n"));
            let body = format!("module {path}");
            let data = if path.ends_with(".zst") {
                zstd_bytes(body.as_bytes())
            } else {
                body.into_bytes()
            };
            write(&m.join(path), &data);
        }
        write(&m.join("modules.dep"), text.as_bytes());
        write(&m.join("modules.builtin"), b"kernel/drivers/ata/ahci.ko\n");
        write(&root.join("etc/hostname"), b"fastpatch\n");
        write(&root.join("etc/default/thing"), b"X=1\n");
        write(&root.join("var/lib/thing/state"), b"s\n");
        write(&dir.path().join("init"), b"\x7fELF the slot init");
        write(&dir.path().join("fastpatch"), b"\x7fELF fastpatch");
        write(&dir.path().join("fastpatch-engined"), b"\x7fELF engined");
        fastpatch_payload::keys::write_key_pair(
            &dir.path().join("release.pem"),
            &dir.path().join("release.pub.pem"),
        )
        .unwrap();
        fastpatch_payload::keys::write_key_pair(
            &dir.path().join("other.pem"),
            &dir.path().join("other.pub.pem"),
        )
        .unwrap();
        Fixture { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn options(&self, version: &str) -> BuildOptions {
        let mut o = BuildOptions::new(self.path("rootfs"), version.into(), self.path("out"));
        o.keys = vec![self.path("release.pem")];
        o.init = self.path("init");
        o.fastpatch_binary = self.path("fastpatch");
        o.engined_binary = self.path("fastpatch-engined");
        o.slot_size = 64 << 20;
        o.disk_size = 512 << 20;
        o
    }

    pub fn public_key(&self, name: &str) -> Vec<rsa::RsaPublicKey> {
        fastpatch_payload::keys::load_public_keys(&[self.path(name)]).unwrap()
    }

    /// Everything in the fixture's directory (a failed build must add nothing).
    pub fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

pub fn kernel_bytes() -> Vec<u8> {
    (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn zstd_bytes(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("zstd")
        .args(["-q", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("zstd");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// A file of an ext4 image, read with debugfs (`path` as mounted on /usr, without `/usr`).
pub fn debugfs_cat(image: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("/usr/sbin/debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .expect("debugfs");
    assert!(
        out.status.success(),
        "debugfs cat {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// What `debugfs stat` says of `path` (for links and modes).
pub fn debugfs_stat(image: &Path, path: &str) -> String {
    let out = Command::new("/usr/sbin/debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(image)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}
