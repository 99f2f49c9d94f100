//! What the builder refuses, each with a one-line error, leaving nothing behind.

use std::os::unix::fs::symlink;

use crate::tree::{Fixture, KVER};

/// Builds with a change made to the fixture first; returns the error, and checks that the
/// fixture's directory has nothing new (no output, no work directory).
fn refused(change: impl FnOnce(&Fixture, &mut fastpatch_image::BuildOptions)) -> String {
    let fx = Fixture::new();
    let mut opts = fx.options("1.0.0");
    change(&fx, &mut opts);
    let before = fx.listing();
    let err = fastpatch_image::build(&opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert_eq!(
        fx.listing(),
        before,
        "a refused build left files behind ({err})"
    );
    assert!(!err.contains('\n'), "not one line: {err}");
    err
}

#[test]
fn a_tree_without_merged_usr() {
    let err = refused(|fx, _| {
        let bin = fx.path("rootfs/bin");
        std::fs::remove_file(&bin).unwrap();
        std::fs::create_dir(&bin).unwrap();
    });
    assert!(
        err.contains("/bin is a directory, not a link to usr/bin: not a merged-/usr tree"),
        "{err}"
    );
    let err = refused(|fx, _| {
        let lib = fx.path("rootfs/lib");
        std::fs::remove_file(&lib).unwrap();
        symlink("elsewhere", &lib).unwrap();
    });
    assert!(err.contains("/lib links to elsewhere"), "{err}");
}

#[test]
fn no_kernel_or_no_modules() {
    let err = refused(|fx, _| {
        std::fs::remove_dir_all(fx.path("rootfs/boot")).unwrap();
        std::fs::remove_dir_all(fx.path("rootfs/usr/lib/modules")).unwrap();
    });
    assert!(err.contains("no kernel"), "{err}");
    let err = refused(|fx, _| std::fs::remove_dir_all(fx.path("rootfs/boot")).unwrap());
    assert!(
        err.contains(&format!("no kernel image for {KVER}")),
        "{err}"
    );
    let err = refused(|fx, _| {
        std::fs::remove_file(fx.path(&format!("rootfs/usr/lib/modules/{KVER}/modules.dep")))
            .unwrap()
    });
    assert!(
        err.contains(&format!("no modules for kernel {KVER}")),
        "{err}"
    );
    let err = refused(|fx, _| {
        std::fs::create_dir_all(fx.path("rootfs/usr/lib/modules/6.2.0-other")).unwrap()
    });
    assert!(
        err.contains("several kernels") && err.contains("--kernel-version"),
        "{err}"
    );
    let err = refused(|fx, _| {
        let dep = fx.path(&format!("rootfs/usr/lib/modules/{KVER}/modules.dep"));
        let text = std::fs::read_to_string(&dep).unwrap();
        let kept: String = text
            .lines()
            .filter(|l| !l.contains("dm-verity"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&dep, kept).unwrap();
    });
    assert!(
        err.contains("module dm_verity is neither in modules.dep nor built in"),
        "{err}"
    );
}

#[test]
fn a_usr_bigger_than_the_slot() {
    let err = refused(|fx, opts| {
        // 40 MiB of incompressible data: more than a 32 MiB slot.
        let mut data = vec![0u8; 40 << 20];
        let mut x = 0x9e3779b97f4a7c15u64;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(fx.path("rootfs/usr/lib/big.bin"), data).unwrap();
        opts.slot_size = 32 << 20;
    });
    assert!(
        err.contains("bigger than the 33554432 byte (32 MiB) slot"),
        "{err}"
    );
}

#[test]
fn an_unsigned_build_or_a_bad_version() {
    let err = refused(|_, opts| opts.keys.clear());
    assert!(err.contains("no signing key"), "{err}");
    let err = refused(|fx, opts| opts.keys = vec![fx.path("release.pub.pem")]);
    assert!(err.contains("release.pub.pem"), "{err}");
    let err = refused(|_, opts| opts.version = "1.0 beta".into());
    assert!(err.contains("version \"1.0 beta\""), "{err}");
}

#[test]
fn an_existing_output_is_kept_unless_forced() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.path("out")).unwrap();
    std::fs::write(fx.path("out/keep"), b"mine").unwrap();
    let err = fastpatch_image::build(&fx.options("1.0.0"), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(fx.path("out/keep")).unwrap(), b"mine");

    // --force with a build that fails keeps the old output too; one that succeeds replaces it.
    let mut opts = fx.options("1.0.0");
    opts.force = true;
    opts.keys.clear();
    fastpatch_image::build(&opts, &mut |_| {}).unwrap_err();
    assert_eq!(std::fs::read(fx.path("out/keep")).unwrap(), b"mine");
    opts.keys = vec![fx.path("release.pem")];
    fastpatch_image::build(&opts, &mut |_| {}).unwrap();
    assert!(!fx.path("out/keep").exists());
    assert!(fx.path("out/usr.img").is_file());
}

#[test]
fn a_command_line_that_names_the_verity_device() {
    let err = refused(|_, opts| opts.cmdline = Some("quiet verity.usrhash=00".into()));
    assert!(
        err.contains("verity.usr words are the boot chain's own"),
        "{err}"
    );
}
