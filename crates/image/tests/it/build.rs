//! A tree becomes a release: each output checked with the tool a user would use.

use std::io::Read;
use std::process::Command;

use fastpatch_image::{verity, Release};
use sha2::{Digest, Sha256};

use crate::tree::{debugfs_cat, debugfs_stat, kernel_bytes, Fixture, KVER};

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[test]
fn a_tree_becomes_a_sealed_signed_bootable_release() {
    let fx = Fixture::new();
    let mut steps = Vec::new();
    let mut opts = fx.options("1.0.0");
    opts.cmdline = Some(" quiet fastpatch.release=1 ".into());
    let release = fastpatch_image::build(&opts, &mut |s| steps.push(s.to_string())).unwrap();
    assert!(steps.iter().any(|s| s.contains("sealing")), "{steps:?}");
    let out = fx.path("out");
    let image = out.join("usr.img");
    let image_bytes = std::fs::read(&image).unwrap();

    // release.json says what was built, and agrees with the files.
    let json: Release =
        serde_json::from_slice(&std::fs::read(out.join("release.json")).unwrap()).unwrap();
    assert_eq!(json.root_hash, release.root_hash);
    assert_eq!(
        (json.version.as_str(), json.kernel_version.as_str()),
        ("1.0.0", KVER)
    );
    assert_eq!(json.usr_image_bytes, image_bytes.len() as u64);
    assert_eq!(json.usr_image_sha256, sha256_hex(&image_bytes));
    fastpatch_image::output::check_hashes(&out).unwrap();

    // The seal verifies with the release key only, and veritysetup accepts every block.
    let seal = verity::check(&image, &fx.public_key("release.pub.pem")).unwrap();
    assert_eq!(seal.body.version, "1.0.0");
    assert_eq!(seal.body.root_hash, release.root_hash);
    assert_eq!(seal.body.data_bytes, release.usr_fs_bytes);
    let err = verity::check(&image, &fx.public_key("other.pub.pem"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("signature does not verify"), "{err}");

    // The file system holds the tree's /usr and what makes it a fastpatch OS version.
    assert_eq!(
        debugfs_cat(&image, "/bin/hello"),
        b"#!/bin/sh\necho hello\n"
    );
    let os_release = String::from_utf8(debugfs_cat(&image, "/lib/os-release")).unwrap();
    assert!(
        os_release.contains("VERSION=1.0.0\n") && os_release.contains("ID=debian\n"),
        "{os_release}"
    );
    assert!(
        !os_release.contains("VERSION=\"12") && !os_release.contains("VERSION_ID=\"12"),
        "{os_release}"
    );
    assert_eq!(debugfs_cat(&image, "/boot/vmlinuz"), kernel_bytes());
    assert_eq!(
        debugfs_cat(&image, "/boot/cmdline"),
        b"quiet fastpatch.release=1\n"
    );
    assert_eq!(debugfs_cat(&image, "/bin/fastpatch"), b"\x7fELF fastpatch");
    assert_eq!(
        debugfs_cat(&image, "/bin/fastpatch-engined"),
        b"\x7fELF engined"
    );
    assert!(
        debugfs_stat(&image, "/bin/update_engine_client").contains("Fast link dest: \"fastpatch\"")
    );
    let key = String::from_utf8(debugfs_cat(
        &image,
        "/share/update_engine/update-payload-key.pub.pem",
    ))
    .unwrap();
    assert_eq!(
        key,
        std::fs::read_to_string(fx.path("release.pub.pem")).unwrap()
    );
    let unit = String::from_utf8(debugfs_cat(
        &image,
        "/lib/systemd/system/fastpatch-engine.service",
    ))
    .unwrap();
    assert_eq!(
        unit,
        include_str!("../../../../dist/systemd/fastpatch-engine.service")
    );
    assert!(debugfs_stat(
        &image,
        "/lib/systemd/system/multi-user.target.wants/fastpatch-engine.service"
    )
    .contains("../fastpatch-engine.service"));
    // locksmithd and the health gate, enabled as shipped; locksmith's tools at Flatcar's paths.
    assert!(debugfs_stat(
        &image,
        "/lib/systemd/system/boot-complete.target.requires/fastpatch-health-check.service"
    )
    .contains("../fastpatch-health-check.service"));
    assert_eq!(
        debugfs_cat(&image, "/lib/systemd/system/locksmithd.service"),
        include_bytes!("../../../../dist/systemd/locksmithd.service")
    );
    assert!(debugfs_stat(
        &image,
        "/lib/systemd/system/multi-user.target.wants/locksmithd.service"
    )
    .contains("../locksmithd.service"));
    assert!(debugfs_stat(&image, "/bin/locksmithctl").contains("Fast link dest: \"fastpatch\""));
    assert!(debugfs_stat(&image, "/lib/locksmith/locksmithd")
        .contains("Fast link dest: \"../../bin/fastpatch\""));
    let policy = debugfs_cat(&image, "/share/dbus-1/system.d/com.coreos.update1.conf");
    assert_eq!(
        policy,
        include_bytes!("../../../../dist/dbus/com.coreos.update1.conf")
    );
    assert_eq!(
        debugfs_cat(&image, "/share/factory/etc/hostname"),
        b"fastpatch\n"
    );
    let rules = String::from_utf8(debugfs_cat(
        &image,
        "/lib/tmpfiles.d/fastpatch-factory.conf",
    ))
    .unwrap();
    for line in [
        "L /bin - - - - usr/bin",
        "L /lib64 - - - - usr/lib64",
        "C /etc/hostname - - - - /usr/share/factory/etc/hostname",
        "C /etc/default - - - - /usr/share/factory/etc/default",
        "C /etc/default/thing - - - - /usr/share/factory/etc/default/thing",
        "C /var/lib/thing/state - - - - /usr/share/factory/var/lib/thing/state",
    ] {
        assert!(rules.lines().any(|l| l == line), "no {line:?} in\n{rules}");
    }
    assert_eq!(
        release.factory_rules,
        rules.lines().filter(|l| l.starts_with("C ")).count()
    );

    // The slot initramfs: the init, and the modules with dependencies first, decompressed.
    let initramfs = debugfs_cat(&image, "/boot/initramfs.img");
    let files = cpio_files(&initramfs);
    let get = |name: &str| {
        files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
    };
    assert_eq!(get("init").unwrap(), b"\x7fELF the slot init");
    assert_eq!(
        get("lib/modules/dm-bufio.ko").unwrap(),
        b"module kernel/drivers/md/dm-bufio.ko.zst"
    );
    let order = String::from_utf8(get("lib/modules/load-order").unwrap()).unwrap();
    let pos = |m: &str| {
        order
            .lines()
            .position(|l| l == m)
            .unwrap_or_else(|| panic!("{m} not in {order}"))
    };
    assert!(
        pos("dm-mod.ko") < pos("dm-bufio.ko") && pos("dm-bufio.ko") < pos("dm-verity.ko"),
        "{order}"
    );
    assert!(
        pos("virtio.ko") < pos("virtio_blk.ko") && pos("crc32c_generic.ko") < pos("ext4.ko"),
        "{order}"
    );
    assert!(!order.contains("ahci"), "built in, not loaded: {order}");

    // The payload is signed, and it is the sealed image.
    let payload = std::fs::File::open(out.join("update.payload")).unwrap();
    let v = fastpatch_payload::verify::verify(payload, &fx.public_key("release.pub.pem")).unwrap();
    assert!(v.image_hash_checked);
    assert_eq!(v.inspection.image_sha256, sha256_hex(&image_bytes));

    // The disk: a valid GPT whose USR-A holds the sealed image, and an empty ext4 ROOT.
    let disk = out.join("disk.img");
    let sg = Command::new("sgdisk")
        .arg("-v")
        .arg(&disk)
        .output()
        .unwrap();
    let sg_out = String::from_utf8_lossy(&sg.stdout);
    assert!(
        sg.status.success() && sg_out.contains("No problems found"),
        "{sg_out}"
    );
    let d = fastpatch_disk::Disk::open(&disk, fastpatch_disk::OpenMode::ReadOnly).unwrap();
    let (usr_at, usr_len) = d.partition_byte_range(fastpatch_disk::USR_A_INDEX).unwrap();
    assert_eq!(usr_len, 64 << 20);
    let (root_at, _) = d.partition_byte_range(9).unwrap();
    let mut f = std::fs::File::open(&disk).unwrap();
    let mut slot = vec![0u8; image_bytes.len()];
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(usr_at)).unwrap();
    f.read_exact(&mut slot).unwrap();
    assert!(slot == image_bytes, "USR-A differs from usr.img");
    let mut sb = vec![0u8; 1024];
    f.seek(SeekFrom::Start(root_at + 1024)).unwrap();
    f.read_exact(&mut sb).unwrap();
    assert_eq!(&sb[0x38..0x3a], &[0x53, 0xef], "ROOT is not ext4");
    assert_eq!(&sb[0x78..0x7c], b"ROOT");
}

#[test]
fn a_changed_block_or_seal_does_not_verify() {
    let fx = Fixture::new();
    fastpatch_image::build(&fx.options("1.0.0"), &mut |_| {}).unwrap();
    let image = fx.path("out/usr.img");
    let keys = fx.public_key("release.pub.pem");
    let pristine = std::fs::read(&image).unwrap();
    let fs_bytes =
        fastpatch_payload::seal::ext4_bytes(&mut std::io::Cursor::new(&pristine)).unwrap() as usize;

    // One byte of a data block (inside the file system, after the superblock area).
    let mut bytes = pristine.clone();
    bytes[fs_bytes / 2] ^= 0x01;
    std::fs::write(&image, &bytes).unwrap();
    let err = verity::check(&image, &keys).unwrap_err().to_string();
    assert!(err.contains("verity check failed"), "{err}");

    // One byte of the seal's body: the signature no longer matches (or the body no longer parses).
    let mut bytes = pristine.clone();
    let body_at = fs_bytes + 16;
    let pos = bytes[body_at..body_at + 600]
        .windows(7)
        .position(|w| w == b"\"1.0.0\"")
        .unwrap();
    bytes[body_at + pos + 1] = b'9';
    std::fs::write(&image, &bytes).unwrap();
    let err = verity::check(&image, &keys).unwrap_err().to_string();
    assert!(err.contains("signature does not verify"), "{err}");

    // The pristine image still verifies (the checks above failed for the change alone).
    std::fs::write(&image, &pristine).unwrap();
    verity::check(&image, &keys).unwrap();
}

#[test]
fn a_tarball_builds_the_same_tree() {
    let fx = Fixture::new();
    let tar = fx.path("rootfs.tar.zst");
    let st = Command::new("tar")
        .arg("--zstd")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(fx.path("rootfs"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let mut opts = fx.options("2.0.0");
    opts.rootfs = tar;
    let release = fastpatch_image::build(&opts, &mut |_| {}).unwrap();
    assert_eq!(release.kernel_version, KVER);
    let image = fx.path("out/usr.img");
    assert_eq!(
        debugfs_cat(&image, "/bin/hello"),
        b"#!/bin/sh\necho hello\n"
    );
    assert!(String::from_utf8(debugfs_cat(&image, "/lib/os-release"))
        .unwrap()
        .contains("VERSION=2.0.0\n"));
    verity::check(&image, &fx.public_key("release.pub.pem")).unwrap();
}

/// The regular files of a cpio newc archive.
fn cpio_files(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut rest = archive;
    loop {
        let mut reader = cpio::NewcReader::new(rest).unwrap();
        if reader.entry().is_trailer() {
            break;
        }
        let name = reader.entry().name().to_string();
        let mut data = Vec::new();
        reader.read_to_end(&mut data).unwrap();
        files.push((name, data));
        rest = reader.finish().unwrap();
    }
    files
}
