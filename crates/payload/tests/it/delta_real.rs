//! A delta on a small real pair: two ext4 images made by `mkfs.ext4 -d` from real binaries and
//! libraries of this machine, the second an "update" of the first (a library patched in place
//! and grown, a binary gone, another added, a text file edited). The delta must round-trip
//! byte for byte and be much smaller than the full payload.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use fastpatch_payload::delta::{generate_delta, DeltaOptions};
use fastpatch_payload::install::{install_from_reader, FileRange, InstallTarget, SourceFile};

const MIB: u64 = 1 << 20;

/// Real files every Debian machine has (essential packages: bash, tar, sed, perl-base, libc6;
/// libstdc++6, which apt needs).
const REAL_FILES: &[&str] = &[
    "/usr/bin/bash",
    "/usr/bin/tar",
    "/usr/bin/sed",
    "/usr/bin/perl",
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
    "/usr/lib/x86_64-linux-gnu/libm.so.6",
];

fn copy_into(tree: &Path, files: &[&str]) {
    for f in files {
        let dest = tree.join(f.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(f, &dest).unwrap_or_else(|e| panic!("copying {f}: {e}"));
    }
}

/// `mkfs.ext4 -d tree` into a 48 MiB image, with fixed UUID and hash seed.
fn ext4(tree: &Path, image: &Path) {
    let f = std::fs::File::create(image).unwrap();
    f.set_len(48 * MIB).unwrap();
    drop(f);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-L", "USR"])
        .args(["-U", "1b4e28ba-2fa1-11d2-883f-0016d3cca427"])
        .args([
            "-E",
            "hash_seed=1b4e28ba-2fa1-11d2-883f-0016d3cca427,root_owner=0:0",
        ])
        .arg("-d")
        .arg(tree)
        .arg(image)
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .output()
        .expect("mkfs.ext4 (Debian package e2fsprogs) runs");
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn delta_round_trip_on_a_small_real_ext4_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (old_tree, new_tree) = (dir.path().join("old"), dir.path().join("new"));
    let missing: Vec<_> = REAL_FILES
        .iter()
        .filter(|f| !Path::new(f).exists())
        .collect();
    assert!(missing.is_empty(), "this machine lacks {missing:?}");
    copy_into(&old_tree, &REAL_FILES[..REAL_FILES.len() - 1]);
    std::fs::write(old_tree.join("os-release"), "VERSION=1.0.0\nID=fastpatch\n").unwrap();
    // The update: libm arrives, libstdc++ is patched in ten places and grows by
    // 100 KiB, bash is gone, os-release says 2.0.0.
    copy_into(&new_tree, REAL_FILES);
    std::fs::remove_file(new_tree.join("usr/bin/bash")).unwrap();
    let lib = new_tree.join("usr/lib/x86_64-linux-gnu/libstdc++.so.6");
    let mut bytes = std::fs::read(&lib).unwrap();
    let n = bytes.len();
    for i in 0..10 {
        let at = n / 11 * (i + 1);
        bytes[at..at + 64]
            .iter_mut()
            .for_each(|b| *b = b.wrapping_add(1));
    }
    bytes.extend((0..100 * 1024u32).map(|i| (i % 251) as u8));
    std::fs::write(&lib, bytes).unwrap();
    std::fs::write(new_tree.join("os-release"), "VERSION=2.0.0\nID=fastpatch\n").unwrap();
    let (old_img, new_img) = (dir.path().join("old.img"), dir.path().join("new.img"));
    ext4(&old_tree, &old_img);
    ext4(&new_tree, &new_img);

    let key = [keys().private.clone()];
    let full = dir.path().join("full.bin");
    generate(
        &new_img,
        &full,
        fastpatch_payload::generate::Compression::Zstd,
        &key,
    );
    let delta = dir.path().join("delta.bin");
    let report = generate_delta(
        &old_img,
        &new_img,
        &key,
        &delta,
        &DeltaOptions {
            zstd_level: 9,
            source_version: Some("1.0.0".into()),
            smaller_than: Some(std::fs::metadata(&full).unwrap().len()),
        },
        &mut |_, _, _| {},
    )
    .unwrap();
    let (delta_len, full_len) = (
        std::fs::metadata(&delta).unwrap().len(),
        std::fs::metadata(&full).unwrap().len(),
    );
    eprintln!(
        "real ext4 pair: delta {delta_len} bytes, full {full_len} bytes; {} bytes copied from the source, {} changed",
        report.copied_bytes, report.changed_bytes
    );
    // The delta carries the new library (libm, ~0.9 MiB raw) and the patches; the full
    // payload carries every file.
    assert!(
        delta_len * 3 < full_len * 2 && report.copied_bytes > 4 * MIB,
        "delta {delta_len} bytes, full {full_len}; {report:?}"
    );

    let target_path = dir.path().join("target.img");
    std::fs::write(&target_path, vec![0u8; 48 * MIB as usize]).unwrap();
    let target: Arc<dyn InstallTarget> = Arc::new(FileRange::whole(&target_path).unwrap());
    let mut o = opts(vec![keys().public.clone()]);
    o.source = Some(Arc::new(SourceFile::whole(&old_img).unwrap()));
    let bytes = std::fs::read(&delta).unwrap();
    install_from_reader(bytes.as_slice(), target, o).unwrap();
    assert!(
        std::fs::read(&target_path).unwrap() == std::fs::read(&new_img).unwrap(),
        "the rebuilt image differs from the new one"
    );
}
