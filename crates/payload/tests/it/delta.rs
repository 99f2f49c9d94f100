//! Delta payloads end to end: generate from a source/new image pair, install onto a target
//! with the source beside it, and every way a delta must be refused (wrong or missing
//! source, tampered or truncated payload, a source hash that does not match).

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use fastpatch_payload::delta::{generate_delta, DeltaOptions};
use fastpatch_payload::install::{
    install_from_reader, FileRange, InstallSource, InstallTarget, Installer, SourceFile,
};
use fastpatch_payload::proto::OpType;
use fastpatch_payload::{verify, PayloadError};
use rand::{Rng, RngCore, SeedableRng};

const MIB: usize = 1 << 20;
const BLOCK: usize = 4096;

/// Files of a synthetic filesystem: name, content.
type Files = Vec<(String, Vec<u8>)>;

/// Text-like content (compressible, with structure) or random bytes (not compressible).
fn content(rng: &mut rand::rngs::StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    if rng.gen_bool(0.5) {
        rng.fill_bytes(&mut v);
    } else {
        let words: [&[u8]; 6] = [
            b"update ", b"engine ", b"slot ", b"verity ", b"usr\n", b"0x7f3a ",
        ];
        let mut i = 0;
        while i < len {
            let w = words[rng.gen_range(0..words.len())];
            let n = w.len().min(len - i);
            v[i..i + n].copy_from_slice(&w[..n]);
            i += n;
        }
    }
    v
}

/// Lays files out block-aligned, in order, with a 64 KiB zero gap after every fifth file,
/// into an image of `size` bytes.
fn layout(files: &Files, size: usize) -> Vec<u8> {
    let mut img = vec![0u8; size];
    let mut at = 0;
    for (i, (_, data)) in files.iter().enumerate() {
        img[at..at + data.len()].copy_from_slice(data);
        at = (at + data.len()).div_ceil(BLOCK) * BLOCK;
        if i % 5 == 4 {
            at += 64 << 10;
        }
    }
    assert!(at <= size, "files do not fit");
    img
}

struct Pair {
    dir: tempfile::TempDir,
    source: Vec<u8>,
    new: Vec<u8>,
}

impl Pair {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// An old and a new image of 16 MiB: the new one shifts every file after a grown one,
/// edits bytes inside files, inserts bytes mid-file (an unaligned shift), drops a file,
/// adds a new one and swaps two.
fn pair(seed: u64) -> Pair {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut old: Files = (0..40)
        .map(|i| {
            let len = rng.gen_range(8 << 10..500 << 10);
            (format!("f{i}"), content(&mut rng, len))
        })
        .collect();
    old.sort_by(|a, b| a.0.cmp(&b.0));
    let mut new = old.clone();
    // Grow file 2 (everything after it moves), edit bytes in 6 and 11, insert 100 bytes in
    // the middle of 15, drop 20, add a new file, swap 25 and 30.
    new[2].1.extend(content(&mut rng, 70_000));
    for i in [6usize, 11] {
        let len = new[i].1.len();
        for _ in 0..20 {
            let at = rng.gen_range(0..len);
            new[i].1[at] ^= 0x5a;
        }
    }
    let mid = new[15].1.len() / 2;
    let insert = content(&mut rng, 100);
    new[15].1.splice(mid..mid, insert);
    new.remove(20);
    new.push(("zz-new".into(), content(&mut rng, 200_000)));
    new.swap(24, 29);
    let dir = tempfile::tempdir().unwrap();
    let source = layout(&old, 16 * MIB);
    let new = layout(&new, 16 * MIB);
    write(&dir.path().join("old.img"), &source);
    write(&dir.path().join("new.img"), &new);
    Pair { dir, source, new }
}

/// Generates the delta (`delta.bin`) and the full payload (`full.bin`); returns both.
fn payloads(p: &Pair) -> (Vec<u8>, Vec<u8>) {
    let key = [keys().private.clone()];
    generate(
        &p.path("new.img"),
        &p.path("full.bin"),
        fastpatch_payload::generate::Compression::Zstd,
        &key,
    );
    let opts = DeltaOptions {
        zstd_level: 9,
        source_version: Some("1.0.0".into()),
        smaller_than: None,
    };
    generate_delta(
        &p.path("old.img"),
        &p.path("new.img"),
        &key,
        &p.path("delta.bin"),
        &opts,
        &mut |_, _, _| {},
    )
    .unwrap();
    (
        std::fs::read(p.path("delta.bin")).unwrap(),
        std::fs::read(p.path("full.bin")).unwrap(),
    )
}

/// A target file of 20 MiB filled with 0xA5 (an old slot's contents).
fn target(dir: &Path) -> (PathBuf, Arc<dyn InstallTarget>) {
    let path = dir.join("target.img");
    write(&path, &vec![0xA5u8; 20 * MIB]);
    let t: Arc<dyn InstallTarget> = Arc::new(FileRange::whole(&path).unwrap());
    (path, t)
}

fn source_of(path: &Path) -> Arc<dyn InstallSource> {
    Arc::new(SourceFile::whole(path).unwrap())
}

fn delta_opts(
    source: Option<Arc<dyn InstallSource>>,
) -> fastpatch_payload::install::InstallOptions {
    let mut o = opts(vec![keys().public.clone()]);
    o.source = source;
    o
}

#[test]
fn delta_round_trip_on_moved_edited_inserted_and_swapped_files() {
    let p = pair(1);
    let (delta, full) = payloads(&p);
    let inspection = verify::inspect(delta.as_slice()).unwrap();
    let kinds: Vec<&str> = inspection.op_kinds.iter().map(|k| k.kind).collect();
    for want in ["SOURCE_COPY", "SOURCE_ZSTD", "ZERO"] {
        assert!(kinds.contains(&want), "no {want} in {kinds:?}");
    }
    let src = inspection
        .delta_source
        .as_ref()
        .expect("a delta names its source");
    assert_eq!(src.version.as_deref(), Some("1.0.0"));
    assert_eq!(src.size, p.source.len() as u64);
    assert!(
        delta.len() * 5 < full.len(),
        "delta {} bytes, full {} bytes",
        delta.len(),
        full.len()
    );
    // Offline verification checks hashes and the signature; the image needs the source.
    let v = verify::verify(delta.as_slice(), &[keys().public.clone()]).unwrap();
    assert!(!v.image_hash_checked);

    let (path, t) = target(p.dir.path());
    let report = install_from_reader(
        delta.as_slice(),
        t,
        delta_opts(Some(source_of(&p.path("old.img")))),
    )
    .unwrap();
    assert_eq!(report.image_size, p.new.len() as u64);
    let got = std::fs::read(&path).unwrap();
    assert_eq!(
        &got[..p.new.len()],
        p.new.as_slice(),
        "target differs from the new image"
    );
    assert!(
        got[p.new.len()..].iter().all(|&b| b == 0xA5),
        "wrote past the image"
    );
}

#[test]
fn delta_against_a_modified_source_is_refused_before_the_target_is_touched() {
    let p = pair(2);
    let (delta, _) = payloads(&p);
    let mut changed = p.source.clone();
    changed[5 * MIB + 123] ^= 1;
    write(&p.path("changed.img"), &changed);
    let (path, t) = target(p.dir.path());
    let err = install_from_reader(
        delta.as_slice(),
        t,
        delta_opts(Some(source_of(&p.path("changed.img")))),
    )
    .unwrap_err();
    assert!(matches!(err, PayloadError::SourceMismatch { .. }), "{err}");
    assert!(err.to_string().contains("use the full payload"), "{err}");
    let got = std::fs::read(&path).unwrap();
    assert!(
        got.iter().all(|&b| b == 0xA5),
        "target touched despite: {err}"
    );

    // A shorter source (a different image) is refused the same way.
    write(&p.path("short.img"), &p.source[..8 * MIB]);
    let (_, t) = target(p.dir.path());
    let err = install_from_reader(
        delta.as_slice(),
        t,
        delta_opts(Some(source_of(&p.path("short.img")))),
    )
    .unwrap_err();
    assert!(matches!(err, PayloadError::SourceMismatch { .. }), "{err}");
}

#[test]
fn delta_without_a_source_is_refused_before_the_target_is_touched() {
    let p = pair(3);
    let (delta, _) = payloads(&p);
    let (path, t) = target(p.dir.path());
    let err = install_from_reader(delta.as_slice(), t, delta_opts(None)).unwrap_err();
    assert!(
        matches!(err, PayloadError::DeltaNeedsSource { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("1.0.0"),
        "names the source version: {err}"
    );
    assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0xA5));
}

/// Edits the first operation of `kind` in a signed delta and re-signs it with the test key.
fn edit_op(
    delta: &[u8],
    kind: OpType,
    edit: impl FnOnce(&mut fastpatch_payload::proto::InstallOperation),
) -> Vec<u8> {
    let (mut manifest, blobs) = split(delta);
    let op = manifest
        .partition_operations
        .iter_mut()
        .find(|op| op.r#type == kind as i32)
        .expect("operation of that kind");
    edit(op);
    assemble(manifest, &blobs, &[keys().private.clone()])
}

#[test]
fn a_wrong_source_hash_in_a_signed_operation_is_refused() {
    let p = pair(4);
    let (delta, _) = payloads(&p);
    for kind in [OpType::SourceCopy, OpType::SourceZstd] {
        let bad = edit_op(&delta, kind, |op| {
            op.src_sha256_hash.as_mut().unwrap()[0] ^= 1;
        });
        let (_, t) = target(p.dir.path());
        let err = install_from_reader(
            bad.as_slice(),
            t,
            delta_opts(Some(source_of(&p.path("old.img")))),
        )
        .unwrap_err();
        assert!(
            matches!(err, PayloadError::SourceHashMismatch { .. }),
            "{kind:?}: {err}"
        );
    }
}

#[test]
fn malformed_delta_operations_are_refused_by_the_plan() {
    let p = pair(5);
    let (delta, _) = payloads(&p);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "source extents",
            edit_op(&delta, OpType::SourceCopy, |op| op.src_extents.clear()),
        ),
        (
            "source hash",
            edit_op(&delta, OpType::SourceZstd, |op| op.src_sha256_hash = None),
        ),
        (
            "reads",
            edit_op(&delta, OpType::SourceCopy, |op| {
                op.src_extents[0].num_blocks = Some(op.src_extents[0].num_blocks.unwrap() + 1)
            }),
        ),
        (
            "beyond",
            edit_op(&delta, OpType::SourceCopy, |op| {
                op.src_extents[0].start_block = Some(16 * MIB as u64 / 4096)
            }),
        ),
        ("old_partition_info", {
            let (mut m, blobs) = split(&delta);
            m.old_partition_info = None;
            assemble(m, &blobs, &[keys().private.clone()])
        }),
    ];
    for (want, bad) in cases {
        let (path, t) = target(p.dir.path());
        let err = install_from_reader(
            bad.as_slice(),
            t,
            delta_opts(Some(source_of(&p.path("old.img")))),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(want),
            "expected '{want}' in: {err}"
        );
        assert!(
            std::fs::read(&path).unwrap().iter().all(|&b| b == 0xA5),
            "{want}: target touched"
        );
    }
}

#[test]
fn tampered_or_truncated_delta_is_refused() {
    let p = pair(6);
    let (delta, _) = payloads(&p);
    let (manifest, _) = split(&delta);
    let blobs_start = 20 + (u64::from_be_bytes(delta[12..20].try_into().unwrap()) as usize);
    let patch = manifest
        .partition_operations
        .iter()
        .find(|op| op.r#type == OpType::SourceZstd as i32)
        .unwrap();
    let mut tampered = delta.clone();
    tampered[blobs_start + patch.data_offset.unwrap() as usize + 7] ^= 0x10;
    let (_, t) = target(p.dir.path());
    let err = install_from_reader(
        tampered.as_slice(),
        t,
        delta_opts(Some(source_of(&p.path("old.img")))),
    )
    .unwrap_err();
    assert!(
        matches!(err, PayloadError::OperationHashMismatch { .. }),
        "{err}"
    );

    let (_, t) = target(p.dir.path());
    let err = install_from_reader(
        &delta[..delta.len() / 2],
        t,
        delta_opts(Some(source_of(&p.path("old.img")))),
    )
    .unwrap_err();
    assert!(matches!(err, PayloadError::Truncated { .. }), "{err}");
}

#[test]
fn an_interrupted_delta_install_resumes_and_rechecks_the_source() {
    let p = pair(7);
    let (delta, _) = payloads(&p);
    let (path, t) = target(p.dir.path());
    let mut o = delta_opts(Some(source_of(&p.path("old.img"))));
    o.state_dir = Some(p.path("state"));
    o.payload_id = Some("delta-1".into());
    o.checkpoint_bytes = MIB as u64;
    let mut first = Installer::new(t.clone(), o.clone()).unwrap();
    let cut = delta.len() * 8 / 10;
    for chunk in delta[..cut].chunks(10_000) {
        first.feed(chunk).unwrap();
    }
    drop(first);

    // Resuming against a changed source is refused; against the right one it completes.
    let mut changed = p.source.clone();
    changed[100] ^= 1;
    write(&p.path("changed.img"), &changed);
    let mut wrong = o.clone();
    wrong.source = Some(source_of(&p.path("changed.img")));
    let err = match Installer::new(t.clone(), wrong) {
        // The saved state is not resumed against a mismatching source: a fresh start, whose
        // manifest then fails the same check.
        Ok(mut i) => {
            assert_eq!(i.resume_offset(), 0);
            i.feed(&delta).unwrap_err()
        }
        Err(e) => e,
    };
    assert!(matches!(err, PayloadError::SourceMismatch { .. }), "{err}");

    let mut second = Installer::new(t, o).unwrap();
    let from = second.resume_offset() as usize;
    assert!(from > 0, "did not resume");
    for chunk in delta[from..].chunks(10_000) {
        second.feed(chunk).unwrap();
    }
    second.finish().unwrap();
    assert_eq!(
        &std::fs::read(&path).unwrap()[..p.new.len()],
        p.new.as_slice()
    );
}

#[test]
fn a_delta_that_is_not_smaller_than_the_full_payload_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    make_random_image(&dir.path().join("old.img"), 4 * MIB, 1);
    make_random_image(&dir.path().join("new.img"), 4 * MIB, 2);
    let key = [keys().private.clone()];
    generate(
        &dir.path().join("new.img"),
        &dir.path().join("full.bin"),
        fastpatch_payload::generate::Compression::Zstd,
        &key,
    );
    let full = std::fs::metadata(dir.path().join("full.bin"))
        .unwrap()
        .len();
    let opts = DeltaOptions {
        zstd_level: 3,
        source_version: None,
        smaller_than: Some(full),
    };
    let out = dir.path().join("delta.bin");
    let err = generate_delta(
        &dir.path().join("old.img"),
        &dir.path().join("new.img"),
        &key,
        &out,
        &opts,
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(matches!(err, PayloadError::DeltaNotSmaller { .. }), "{err}");
    assert!(!out.exists(), "a delta was written");
}

#[test]
fn images_that_are_not_whole_blocks_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("old.img"), &vec![1u8; 10_000]);
    make_image(&dir.path().join("new.img"), MIB, 1);
    let err = generate_delta(
        &dir.path().join("old.img"),
        &dir.path().join("new.img"),
        &[keys().private.clone()],
        &dir.path().join("d.bin"),
        &DeltaOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("whole 4096-byte blocks"), "{err}");
}
