//! The `fastpatch payload …` / `fastpatch keygen` commands, run in-process through their
//! clap definitions, on real files.

use crate::common;

use clap::Parser;
use common::*;
use fastpatch_payload::cli::{self, KeygenArgs, PayloadCommand};

#[derive(Parser)]
enum Cmd {
    #[command(subcommand)]
    Payload(PayloadCommand),
    Keygen(KeygenArgs),
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    match Cmd::try_parse_from(std::iter::once("fastpatch").chain(args.iter().copied()))? {
        Cmd::Payload(c) => cli::run(c),
        Cmd::Keygen(a) => cli::run_keygen(a),
    }
}

#[test]
fn keygen_generate_inspect_verify_install() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let image = make_image(&dir.path().join("usr.img"), 5 << 20, 31);
    run(&["keygen", "-o", &p("k.pem")]).unwrap();
    run(&["keygen", "-o", &p("other.pem"), "--public", &p("other.pub")]).unwrap();
    // PKCS#8 private, SPKI public; the private key is not world-readable.
    let private = std::fs::read_to_string(p("k.pem")).unwrap();
    assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(std::fs::read_to_string(p("k.pem.pub.pem"))
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(p("k.pem")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        run(&["keygen", "-o", &p("k.pem")]).is_err(),
        "keygen overwrote a key"
    );

    run(&[
        "payload",
        "generate",
        "--image",
        &p("usr.img"),
        "--key",
        &p("k.pem"),
        "-o",
        &p("u.gz"),
    ])
    .unwrap();
    run(&[
        "payload",
        "generate",
        "--image",
        &p("usr.img"),
        "--key",
        &p("k.pem"),
        "-o",
        &p("f.gz"),
        "--flatcar-compatible",
    ])
    .unwrap();
    let err = run(&[
        "payload",
        "generate",
        "--image",
        &p("usr.img"),
        "--key",
        &p("k.pem"),
        "-o",
        &p("x.gz"),
        "--flatcar-compatible",
        "--compression",
        "zstd",
    ])
    .unwrap_err();
    assert!(format!("{err:#}").contains("cannot use zstd"), "{err:#}");
    let err = run(&[
        "payload",
        "generate",
        "--image",
        &p("usr.img"),
        "--key",
        &p("missing.pem"),
        "-o",
        &p("x.gz"),
    ])
    .unwrap_err();
    assert!(format!("{err:#}").contains("cannot read"), "{err:#}");
    assert!(!dir.path().join("x.gz").exists());

    let i = fastpatch_payload::verify::inspect(std::fs::File::open(p("f.gz")).unwrap()).unwrap();
    assert!(
        i.op_kinds
            .iter()
            .all(|k| k.kind == "REPLACE" || k.kind == "REPLACE_BZ"),
        "{:?}",
        i.op_kinds
    );
    assert_eq!(i.signature_versions, vec![2]);
    let i = fastpatch_payload::verify::inspect(std::fs::File::open(p("u.gz")).unwrap()).unwrap();
    assert!(
        i.op_kinds.iter().any(|k| k.kind == "REPLACE_ZSTD"),
        "{:?}",
        i.op_kinds
    );
    run(&["payload", "inspect", &p("u.gz"), "--json"]).unwrap();
    run(&["payload", "inspect", &p("u.gz")]).unwrap();

    run(&[
        "payload",
        "verify",
        &p("u.gz"),
        "--key",
        &p("k.pem.pub.pem"),
    ])
    .unwrap();
    run(&[
        "payload",
        "verify",
        &p("f.gz"),
        "--key",
        &p("other.pub"),
        "--key",
        &p("k.pem.pub.pem"),
    ])
    .unwrap();
    let err = run(&["payload", "verify", &p("u.gz"), "--key", &p("other.pub")]).unwrap_err();
    assert!(
        format!("{err:#}").contains("no signature in the payload verifies"),
        "{err:#}"
    );
    assert!(
        run(&["payload", "verify", &p("u.gz")]).is_err(),
        "verify without a key must fail"
    );
    let err = run(&["payload", "verify", &p("u.gz"), "--key", &p("nope.pem")]).unwrap_err();
    assert!(format!("{err:#}").contains("nope.pem"), "{err:#}");

    let disk = standard_disk(dir.path());
    let disk_s = disk.to_str().unwrap();
    let before = attrs(&disk);
    let err = run(&[
        "payload",
        "install",
        &p("u.gz"),
        "--disk",
        disk_s,
        "--partition",
        "4",
        "--key",
        &p("other.pub"),
    ])
    .unwrap_err();
    assert!(format!("{err:#}").contains("no signature"), "{err:#}");
    run(&[
        "payload",
        "install",
        &p("f.gz"),
        "--disk",
        disk_s,
        "--partition",
        "4",
        "--key",
        &p("k.pem.pub.pem"),
        "--state-dir",
        &p("state"),
        "--disk-rate",
        "1G",
    ])
    .unwrap();
    assert_eq!(read_slot(&disk, usr_b(), image.len()), image);
    assert_eq!(attrs(&disk), before);
}

/// Key rotation as README "Rotating the payload signing key" describes it, on key directories
/// (the engine's vendor and admin key sets): old key → payloads signed by both → new key only
/// → old key removed.
#[test]
fn key_rotation_old_then_both_then_new_only_then_old_removed() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let image = make_image(&dir.path().join("usr.img"), 3 << 20, 41);
    let keys_d = dir.path().join("keys.d");
    std::fs::create_dir(&keys_d).unwrap();
    let trusted = keys_d.to_str().unwrap().to_string();
    run(&[
        "keygen",
        "-o",
        &p("old.pem"),
        "--public",
        &p("keys.d/old.pem"),
    ])
    .unwrap();
    run(&["keygen", "-o", &p("new.pem"), "--public", &p("new.pub.pem")]).unwrap();
    let verify = |payload: &str, key: &str| run(&["payload", "verify", &p(payload), "--key", key]);
    let refused = |payload: &str, key: &str| {
        let err = verify(payload, key).unwrap_err();
        assert!(
            format!("{err:#}").contains("no signature in the payload verifies"),
            "{payload} with {key}: {err:#}"
        );
    };

    // 1. Today: releases are signed by the old key, machines trust the old key.
    run(&[
        "payload",
        "generate",
        "--image",
        &p("usr.img"),
        "--key",
        &p("old.pem"),
        "-o",
        &p("v1.gz"),
    ])
    .unwrap();
    verify("v1.gz", &trusted).unwrap();

    // 2. Releases signed by both keys: machines that trust either accept them.
    run(&[
        "payload",
        "sign",
        &p("v1.gz"),
        "--key",
        &p("old.pem"),
        "--key",
        &p("new.pem"),
        "-o",
        &p("v2.gz"),
    ])
    .unwrap();
    assert_eq!(
        fastpatch_payload::verify::inspect(std::fs::File::open(p("v2.gz")).unwrap())
            .unwrap()
            .signature_versions,
        vec![2, 2]
    );
    verify("v2.gz", &trusted).unwrap();
    verify("v2.gz", &p("new.pub.pem")).unwrap();
    // A payload the given keys never signed cannot be signed anew: nothing is written.
    let err = run(&[
        "payload",
        "sign",
        &p("v1.gz"),
        "--key",
        &p("new.pem"),
        "-o",
        &p("forged.gz"),
    ])
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("must already verify with one of the given keys"),
        "{err:#}"
    );
    assert!(!dir.path().join("forged.gz").exists());
    // The fleet learns the new key (the admin's key directory, or the next OS version's).
    std::fs::copy(p("new.pub.pem"), keys_d.join("new.pem")).unwrap();
    verify("v1.gz", &trusted).unwrap();
    verify("v2.gz", &trusted).unwrap();

    // 3. New key only (re-signed in place): machines still on the old key alone refuse it.
    std::fs::copy(p("v2.gz"), p("v3.gz")).unwrap();
    run(&["payload", "sign", &p("v3.gz"), "--key", &p("new.pem")]).unwrap();
    verify("v3.gz", &trusted).unwrap();
    refused("v3.gz", &p("keys.d/old.pem"));

    // 4. The old key is removed: what only it signed is refused, on verify and on install
    // (the partition table unchanged, nothing staged); the new releases install.
    std::fs::remove_file(keys_d.join("old.pem")).unwrap();
    refused("v1.gz", &trusted);
    let disk = standard_disk(dir.path());
    let disk_s = disk.to_str().unwrap();
    let before = attrs(&disk);
    let install = |payload: &str| {
        run(&[
            "payload",
            "install",
            &p(payload),
            "--disk",
            disk_s,
            "--partition",
            "4",
            "--key",
            &trusted,
        ])
    };
    let err = install("v1.gz").unwrap_err();
    assert!(format!("{err:#}").contains("no signature"), "{err:#}");
    install("v3.gz").unwrap();
    assert_eq!(read_slot(&disk, usr_b(), image.len()), image);
    assert_eq!(attrs(&disk), before);
    // An empty key directory is no key at all.
    std::fs::remove_file(keys_d.join("new.pem")).unwrap();
    assert!(verify("v3.gz", &trusted).is_err());
}

#[test]
fn delta_generate_and_install_with_fallback_to_the_full_payload() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let old = make_image(&dir.path().join("old.img"), 4 << 20, 40);
    // The new image: the old one with 100 KiB rewritten in the middle.
    let mut new = old.clone();
    for (i, b) in new[(2 << 20)..(2 << 20) + 100_000].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    write(&dir.path().join("new.img"), &new);
    run(&["keygen", "-o", &p("k.pem"), "--public", &p("k.pub")]).unwrap();
    let gen = |out: &str, source: &str, image: &str| {
        run(&[
            "payload",
            "generate",
            "--image",
            &p(image),
            "--source",
            &p(source),
            "--source-version",
            "1.0.0",
            "--key",
            &p("k.pem"),
            "-o",
            &p(out),
        ])
    };
    gen("delta.bin", "old.img", "new.img").unwrap();
    let i =
        fastpatch_payload::verify::inspect(std::fs::File::open(p("delta.bin")).unwrap()).unwrap();
    assert_eq!(i.delta_source.unwrap().version.as_deref(), Some("1.0.0"));

    // Installing needs the source; with it, the target ends up holding the new image.
    write(&dir.path().join("target.img"), &vec![0u8; 5 << 20]);
    let install = |source: Option<&str>| {
        let mut args = vec!["payload", "install"];
        let payload = p("delta.bin");
        let (target, key) = (p("target.img"), p("k.pub"));
        args.extend([payload.as_str(), "--target-file", &target, "--key", &key]);
        let src = source.map(p);
        if let Some(s) = &src {
            args.extend(["--source", s.as_str()]);
        }
        run(&args)
    };
    let err = install(None).unwrap_err();
    assert!(
        format!("{err:#}").contains("needs the source image"),
        "{err:#}"
    );
    install(Some("old.img")).unwrap();
    assert_eq!(
        &std::fs::read(p("target.img")).unwrap()[..new.len()],
        new.as_slice()
    );

    // Incompressible and unrelated to its source, a delta is not smaller: the output is the
    // full payload.
    make_random_image(&dir.path().join("random-new.img"), 4 << 20, 41);
    gen("fallback.bin", "old.img", "random-new.img").unwrap();
    let i = fastpatch_payload::verify::inspect(std::fs::File::open(p("fallback.bin")).unwrap())
        .unwrap();
    assert!(i.delta_source.is_none(), "expected the full payload");
}
