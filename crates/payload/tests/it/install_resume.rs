//! Installs that stop and go on: resumes from a checkpoint (and what is refused after one),
//! the disk rate limit and io.max, and operations checked by read-back.

use crate::common;

use std::io;
use std::sync::Arc;

use common::*;
use fastpatch_payload::generate::Compression;
use fastpatch_payload::install::{install_from_reader, FileRange, InstallTarget, Installer};
use fastpatch_payload::PayloadError;

use crate::install::{fixture, refused, MIB};

#[test]
fn resume_continues_from_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (image, payload) = signed_zstd_payload(dir.path(), 24 * MIB, 6);
    let disk = standard_disk(dir.path());
    let mut o = opts(vec![keys().public.clone()]);
    o.state_dir = Some(dir.path().join("state"));
    o.payload_id = Some("payload-1".into());
    o.checkpoint_bytes = 4 * MIB as u64;

    // First attempt: the download stops at 70 %.
    let mut first = Installer::new(slot_b(&disk), o.clone()).unwrap();
    assert_eq!(first.resume_offset(), 0);
    let cut = payload.len() * 7 / 10;
    for chunk in payload[..cut].chunks(100_000) {
        first.feed(chunk).unwrap();
    }
    drop(first);
    assert_ne!(read_slot(&disk, usr_b(), MIB), image[..MIB]);

    // A different payload id never resumes this state.
    let mut other = o.clone();
    other.payload_id = Some("payload-2".into());
    assert_eq!(
        Installer::new(slot_b(&disk), other)
            .unwrap()
            .resume_offset(),
        0
    );
    // The other id's fresh start has not touched the checkpoint files of payload-1 yet
    // (it only does once its manifest arrives), so payload-1 still resumes.
    let mut second = Installer::new(slot_b(&disk), o.clone()).unwrap();
    let from = second.resume_offset() as usize;
    assert!(
        from > payload.len() / 3 && from <= cut,
        "resumed at {from} of {}",
        payload.len()
    );
    for chunk in payload[from..].chunks(77_777) {
        second.feed(chunk).unwrap();
    }
    let report = second.finish().unwrap();
    assert_eq!(report.resumed_from as usize, from);
    assert_eq!(read_slot(&disk, usr_b(), image.len()), image);
    assert!(
        !dir.path().join("state/state.json").exists(),
        "checkpoint left behind"
    );
}

#[test]
fn resumed_stream_with_corrupt_bytes_is_still_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (image, mut payload) = signed_zstd_payload(dir.path(), 12 * MIB, 7);
    let disk = standard_disk(dir.path());
    let mut o = opts(vec![keys().public.clone()]);
    o.state_dir = Some(dir.path().join("state"));
    o.checkpoint_bytes = 2 * MIB as u64;
    let mut first = Installer::new(slot_b(&disk), o.clone()).unwrap();
    first.feed(&payload[..payload.len() / 2]).unwrap();
    drop(first);
    let mut second = Installer::new(slot_b(&disk), o).unwrap();
    let from = second.resume_offset() as usize;
    assert!(from > 0);
    let n = payload.len();
    payload[n - 5] ^= 1; // signature
                         // The signature is checked as soon as it arrives; feed or finish reports it.
    let err = match second.feed(&payload[from..]) {
        Err(e) => e,
        Ok(()) => second.finish().unwrap_err(),
    };
    assert!(matches!(err, PayloadError::BadSignature { .. }), "{err}");
    assert_ne!(read_slot(&disk, usr_b(), MIB), image[..MIB]);
}

#[test]
fn disk_rate_limit_slows_writes_down() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("usr.img");
    let image = make_image(&img, 6 * MIB, 8);
    let payload = dir.path().join("update.gz");
    generate(&img, &payload, Compression::Zstd, &[keys().private.clone()]);
    let disk = standard_disk(dir.path());
    let mut o = opts(vec![keys().public.clone()]);
    o.disk_rate = Some(8 * MIB as u64); // burst 2 MiB; 5 MiB past the held-back head
    let start = std::time::Instant::now();
    install_from_reader(std::fs::File::open(&payload).unwrap(), slot_b(&disk), o).unwrap();
    let took = start.elapsed();
    // (5 MiB - 2 MiB burst) / 8 MiB/s = 0.375 s at the very least.
    assert!(
        took >= std::time::Duration::from_millis(370),
        "took {took:?}"
    );
    assert_eq!(read_slot(&disk, usr_b(), image.len()), image);
}

#[test]
fn io_max_refuses_a_non_cgroup2_hierarchy() {
    let dir = tempfile::tempdir().unwrap();
    let err = fastpatch_payload::ratelimit::IoMax::apply(
        dir.path(),
        "fastpatch-install",
        (8, 0),
        1 << 20,
        std::process::id(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
}

#[test]
fn operations_without_data_hash_rely_on_signature_and_read_back() {
    // Flatcar's full generator may omit per-operation hashes; such payloads install, and
    // tampered data in them is still refused before the first MiB is written.
    let fx = fixture();
    let (mut manifest, blobs) = split(&fx.payload);
    for op in &mut manifest.partition_operations {
        op.data_sha256_hash = None;
    }
    let p = assemble(manifest, &blobs, &[keys().private.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let disk = standard_disk(dir.path());
    install_from_reader(
        p.as_slice(),
        slot_b(&disk),
        opts(vec![keys().public.clone()]),
    )
    .unwrap();
    assert_eq!(read_slot(&disk, usr_b(), fx.image.len()), fx.image);

    let mut bad = p.clone();
    let at = bad.len() - 300 - 264;
    bad[at] ^= 0x10;
    let err = refused(&fx, &bad, None, vec![keys().public.clone()]);
    assert!(
        matches!(
            err,
            PayloadError::BadSignature { .. } | PayloadError::Decompress { .. }
        ),
        "{err}"
    );
}

#[test]
fn unusable_or_foreign_resume_state_means_starting_over() {
    let dir = tempfile::tempdir().unwrap();
    let (image, payload) = signed_zstd_payload(dir.path(), 10 * MIB, 9);
    let disk = standard_disk(dir.path());
    let state = dir.path().join("state");
    let mut o = opts(vec![keys().public.clone()]);
    o.state_dir = Some(state.clone());
    o.checkpoint_bytes = 2 * MIB as u64;
    let mut first = Installer::new(slot_b(&disk), o.clone()).unwrap();
    first.feed(&payload[..payload.len() / 2]).unwrap();
    drop(first);
    assert!(
        Installer::new(slot_b(&disk), o.clone())
            .unwrap()
            .resume_offset()
            > 0
    );

    // Another target (USR-A of another disk) never resumes USR-B's state.
    let other_dir = tempfile::tempdir().unwrap();
    let other = standard_disk(other_dir.path());
    let other_target: Arc<dyn InstallTarget> = Arc::new(FileRange::partition(&other, 4).unwrap());
    assert_eq!(
        Installer::new(other_target, o.clone())
            .unwrap()
            .resume_offset(),
        0
    );

    // A saved manifest that no longer matches the state, or a garbled state file: start over,
    // and the fresh install still succeeds.
    std::fs::write(state.join("manifest.bin"), b"not the manifest").unwrap();
    assert_eq!(
        Installer::new(slot_b(&disk), o.clone())
            .unwrap()
            .resume_offset(),
        0
    );
    std::fs::write(state.join("state.json"), b"{ garbage").unwrap();
    let mut fresh = Installer::new(slot_b(&disk), o).unwrap();
    assert_eq!(fresh.resume_offset(), 0);
    fresh.feed(&payload).unwrap();
    fresh.finish().unwrap();
    assert_eq!(read_slot(&disk, usr_b(), image.len()), image);
}
