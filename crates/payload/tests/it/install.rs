//! End-to-end installs on real disk images: round trips, and every bad input refused with
//! the slot left un-staged and without the new first MiB.

use crate::common;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use fastpatch_boot_control::{BootControlError, GptBootControl, Slot};
use fastpatch_payload::generate::Compression;
use fastpatch_payload::install::{install_from_reader, FileRange, InstallTarget};
use fastpatch_payload::PayloadError;

pub const MIB: usize = 1 << 20;

#[test]
fn round_trip_64_mib_random_image_onto_usr_b() {
    let dir = tempfile::tempdir().unwrap();
    let image = make_random_image(&dir.path().join("usr.img"), 64 * MIB, 1);
    let payload = dir.path().join("update.gz");
    generate(
        &dir.path().join("usr.img"),
        &payload,
        Compression::Zstd,
        &[keys().private.clone()],
    );
    let v = fastpatch_payload::verify::verify(
        std::fs::File::open(&payload).unwrap(),
        &[keys().public.clone()],
    )
    .unwrap();
    assert!(v.image_hash_checked);
    let disk = standard_disk(dir.path());
    let before = attrs(&disk);
    let report = install_from_reader(
        std::fs::File::open(&payload).unwrap(),
        slot_b(&disk),
        opts(vec![keys().public.clone()]),
    )
    .unwrap();
    assert_eq!(report.image_size, 64 * MIB as u64);
    assert_eq!(read_slot(&disk, usr_b(), 64 * MIB), image);
    // The installer never stages: that is the engine's step after success.
    assert_eq!(attrs(&disk), before);
}

#[test]
fn round_trip_flatcar_compatible_bzip2_and_uncompressed() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("usr.img");
    // An odd size: the last operation ends mid-block and is zero-padded.
    let image = make_image(&img, 6 * MIB + 12345, 2);
    for compression in [Compression::Bz2, Compression::None] {
        let payload = dir.path().join("update.gz");
        generate(&img, &payload, compression, &[keys().private.clone()]);
        let disk_dir = tempfile::tempdir().unwrap();
        let disk = standard_disk(disk_dir.path());
        install_from_reader(
            std::fs::File::open(&payload).unwrap(),
            slot_b(&disk),
            opts(vec![keys().public.clone()]),
        )
        .unwrap();
        assert_eq!(
            read_slot(&disk, usr_b(), image.len()),
            image,
            "{compression:?}"
        );
    }
}

#[test]
fn several_signatures_any_trusted_one_suffices() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("usr.img");
    let image = make_image(&img, 3 * MIB, 3);
    let payload = dir.path().join("update.gz");
    generate(
        &img,
        &payload,
        Compression::Zstd,
        &[other_keys().private.clone(), keys().private.clone()],
    );
    let disk = standard_disk(dir.path());
    let report = install_from_reader(
        std::fs::File::open(&payload).unwrap(),
        slot_b(&disk),
        opts(vec![keys().public.clone()]),
    )
    .unwrap();
    assert_eq!(report.signature.signature_index, 1);
    assert_eq!(read_slot(&disk, usr_b(), image.len()), image);
}

/// A small signed payload and its image, for the bad-input cases.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub image: Vec<u8>,
    pub payload: Vec<u8>,
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("usr.img");
    let image = make_image(&img, 4 * MIB, 4);
    let payload = dir.path().join("update.gz");
    generate(&img, &payload, Compression::Zstd, &[keys().private.clone()]);
    let payload = std::fs::read(&payload).unwrap();
    Fixture {
        _dir: dir,
        image,
        payload,
    }
}

/// Installs `payload` onto USR-B of a fresh disk whose USR-B holds an old image; checks the
/// install fails, the GPT attributes are unchanged, and the slot's first MiB is not the new one.
pub fn refused(
    fx: &Fixture,
    payload: &[u8],
    target: Option<Arc<dyn InstallTarget>>,
    trusted: Vec<rsa::RsaPublicKey>,
) -> PayloadError {
    let dir = tempfile::tempdir().unwrap();
    let disk = standard_disk(dir.path());
    let old = vec![0xA5u8; MIB];
    slot_b(&disk).write_at(&old, 0).unwrap();
    let before = attrs(&disk);
    let target = target.unwrap_or_else(|| slot_b(&disk));
    let err = install_from_reader(payload, target, opts(trusted)).unwrap_err();
    assert_eq!(attrs(&disk), before, "GPT attributes changed after: {err}");
    assert_ne!(
        read_slot(&disk, usr_b(), MIB),
        fx.image[..MIB],
        "new first MiB written despite: {err}"
    );
    err
}

#[test]
fn truncated_payload_is_refused_at_every_stage() {
    let fx = fixture();
    let (manifest, _) = split(&fx.payload);
    let blobs_start = 20 + (u64::from_be_bytes(fx.payload[12..20].try_into().unwrap()) as usize);
    let sig_start = blobs_start + manifest.signatures_offset.unwrap() as usize;
    for cut in [
        0,
        10,
        25,
        blobs_start + 100,
        sig_start - 1,
        sig_start + 5,
        fx.payload.len() - 1,
    ] {
        let err = refused(&fx, &fx.payload[..cut], None, vec![keys().public.clone()]);
        assert!(
            matches!(err, PayloadError::Truncated { .. }),
            "cut {cut}: {err}"
        );
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let fx = fixture();
    let mut p = fx.payload.clone();
    p.extend_from_slice(b"junk");
    let err = refused(&fx, &p, None, vec![keys().public.clone()]);
    let end = fx.payload.len() as u64;
    assert!(
        matches!(err, PayloadError::TrailingData { end: e } if e == end),
        "{err}"
    );
}

#[test]
fn flipped_byte_in_data_is_refused_before_writing_it() {
    let fx = fixture();
    let (manifest, _) = split(&fx.payload);
    let blobs_start = fx.payload.len()
        - manifest.signatures_size.unwrap() as usize
        - manifest.signatures_offset.unwrap() as usize;
    for at in [
        blobs_start + 10,
        blobs_start + manifest.signatures_offset.unwrap() as usize - 3,
    ] {
        let mut p = fx.payload.clone();
        p[at] ^= 0x40;
        let err = refused(&fx, &p, None, vec![keys().public.clone()]);
        assert!(
            matches!(err, PayloadError::OperationHashMismatch { .. }),
            "at {at}: {err}"
        );
    }
}

#[test]
fn flipped_byte_in_manifest_is_refused() {
    let fx = fixture();
    let mlen = u64::from_be_bytes(fx.payload[12..20].try_into().unwrap()) as usize;
    // Every 7th byte of the manifest: each flip must end in an error, whatever it hits.
    for at in (20..20 + mlen).step_by(7) {
        let mut p = fx.payload.clone();
        p[at] ^= 0x01;
        refused(&fx, &p, None, vec![keys().public.clone()]);
    }
    // A flip inside the image hash keeps the manifest well-formed: only the signature
    // (checked before the slot is accepted) catches it.
    let (manifest, blobs) = split(&fx.payload);
    let mut tampered = manifest.clone();
    tampered
        .new_partition_info
        .as_mut()
        .unwrap()
        .hash
        .as_mut()
        .unwrap()[0] ^= 1;
    let mut p = assemble(tampered, &blobs, &[keys().private.clone()]);
    let sig_len = manifest.signatures_size.unwrap() as usize;
    let signed_len = p.len() - sig_len;
    p.splice(
        signed_len..,
        fx.payload[fx.payload.len() - sig_len..].iter().copied(),
    );
    let err = refused(&fx, &p, None, vec![keys().public.clone()]);
    assert!(matches!(err, PayloadError::BadSignature { .. }), "{err}");
}

#[test]
fn flipped_byte_in_signature_is_refused() {
    let fx = fixture();
    let mut p = fx.payload.clone();
    let n = p.len();
    p[n - 10] ^= 0x80;
    let err = refused(&fx, &p, None, vec![keys().public.clone()]);
    assert!(matches!(err, PayloadError::BadSignature { .. }), "{err}");
}

#[test]
fn wrong_key_is_refused() {
    let fx = fixture();
    let err = refused(&fx, &fx.payload, None, vec![other_keys().public.clone()]);
    assert!(
        matches!(err, PayloadError::BadSignature { keys: 1 }),
        "{err}"
    );
}

#[test]
fn no_trusted_key_is_an_error_not_a_skip() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let disk = standard_disk(dir.path());
    let err = install_from_reader(fx.payload.as_slice(), slot_b(&disk), opts(vec![])).unwrap_err();
    assert!(matches!(err, PayloadError::NoTrustedKeys), "{err}");
    let err =
        fastpatch_payload::keys::load_public_keys(&[dir.path().join("missing.pem")]).unwrap_err();
    assert!(matches!(err, PayloadError::Key { .. }), "{err}");
    std::fs::write(
        dir.path().join("garbage.pem"),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let err =
        fastpatch_payload::keys::load_public_keys(&[dir.path().join("garbage.pem")]).unwrap_err();
    assert!(
        err.to_string().contains("not a PEM RSA public key"),
        "{err}"
    );
}

#[test]
fn unsigned_payload_is_refused() {
    let fx = fixture();
    let (manifest, blobs) = split(&fx.payload);
    let p = assemble(manifest, &blobs, &[]);
    let err = refused(&fx, &p, None, vec![keys().public.clone()]);
    assert!(matches!(err, PayloadError::Unsigned), "{err}");
}

#[test]
fn extents_beyond_the_partition_are_refused() {
    let fx = fixture();
    let (mut manifest, blobs) = split(&fx.payload);
    // USR-B is 64 MiB = 16384 blocks; point the last operation past its end.
    let last = manifest.partition_operations.last_mut().unwrap();
    last.dst_extents[0].start_block = Some(16384 - 10);
    let p = assemble(manifest, &blobs, &[keys().private.clone()]);
    let err = refused(&fx, &p, None, vec![keys().public.clone()]);
    assert!(
        matches!(err, PayloadError::ExtentOutOfRange { .. }),
        "{err}"
    );
}

#[test]
fn payload_larger_than_the_slot_is_refused() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let disk = make_disk(&dir.path().join("small.img"), 2 * MIB as u64);
    let before = attrs(&disk);
    let err = install_from_reader(
        fx.payload.as_slice(),
        slot_b(&disk),
        opts(vec![keys().public.clone()]),
    )
    .unwrap_err();
    assert!(matches!(err, PayloadError::PayloadTooLarge { .. }), "{err}");
    assert_eq!(attrs(&disk), before);
}

/// A target that fails with ENOSPC once `budget` bytes have been written.
struct FullDisk {
    inner: Arc<dyn InstallTarget>,
    budget: AtomicU64,
}

impl InstallTarget for FullDisk {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let left = self.budget.load(Ordering::SeqCst);
        if (buf.len() as u64) > left {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.budget.fetch_sub(buf.len() as u64, Ordering::SeqCst);
        self.inner.write_at(buf, offset)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn identity(&self) -> String {
        self.inner.identity()
    }
}

#[test]
fn write_error_is_reported_and_the_slot_not_accepted() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let disk = standard_disk(dir.path());
    let before = attrs(&disk);
    let target = Arc::new(FullDisk {
        inner: slot_b(&disk),
        budget: AtomicU64::new(2 * MIB as u64),
    });
    let err = install_from_reader(
        fx.payload.as_slice(),
        target,
        opts(vec![keys().public.clone()]),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, PayloadError::Io { .. } | PayloadError::Poisoned(_)),
        "{text}"
    );
    assert!(
        text.contains("No space left") || text.contains("writer"),
        "{text}"
    );
    assert_eq!(attrs(&disk), before);
    assert_ne!(read_slot(&disk, usr_b(), MIB), fx.image[..MIB]);
}

#[test]
fn full_tmpfs_is_a_clear_error() {
    // A real full filesystem: a sparse disk image on a 24 MiB tmpfs, USR-B of 64 MiB.
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("running mount (the test needs root and mount(8))");
    assert!(
        status.success(),
        "mounting a tmpfs failed; this test needs root"
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    let img_dir = tempfile::tempdir().unwrap();
    let img = img_dir.path().join("usr.img");
    let image = make_random_image(&img, 40 * MIB, 5);
    let payload = img_dir.path().join("update.gz");
    generate(&img, &payload, Compression::Zstd, &[keys().private.clone()]);
    let disk = standard_disk(&mnt);
    let before = attrs(&disk);
    let err = install_from_reader(
        std::fs::File::open(&payload).unwrap(),
        slot_b(&disk),
        opts(vec![keys().public.clone()]),
    )
    .unwrap_err();
    let text = format!("{err}");
    assert!(
        text.contains("No space left on device") || matches!(err, PayloadError::Poisoned(_)),
        "{text}"
    );
    assert_eq!(attrs(&disk), before);
    assert_ne!(read_slot(&disk, usr_b(), MIB), image[..MIB]);
}

#[test]
fn booted_slot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = standard_disk(dir.path());
    let bc = GptBootControl::new(&disk, Slot::B);
    let err = FileRange::slot(&disk, &bc, Slot::B).unwrap_err();
    assert!(
        matches!(
            err,
            PayloadError::BootControl(BootControlError::BootedSlot(Slot::B))
        ),
        "{err}"
    );
    // And the fallback of an unconfirmed boot is refused too.
    let mut d = fastpatch_disk::Disk::open(&disk, fastpatch_disk::OpenMode::ReadWrite).unwrap();
    d.stage(usr_b()).unwrap();
    drop(d);
    let bc = GptBootControl::new(&disk, Slot::B);
    let err = FileRange::slot(&disk, &bc, Slot::A).unwrap_err();
    assert!(
        matches!(
            err,
            PayloadError::BootControl(BootControlError::BootNotMarkedGood(Slot::B))
        ),
        "{err}"
    );
}
