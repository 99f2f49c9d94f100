//! The guests' binaries, built once before the boot tests: the initramfs `/init` (static: an
//! initramfs has no C library) and the `fastpatch` engine (the test build's, linked
//! dynamically against the C runtime that every initramfs and the Debian image carry).
//! `scripts/test` runs this target as its own phase, so the static build shows in the log with
//! its own time instead of hiding inside the first boot test. Later runs find cargo's build up
//! to date.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fastpatch_qemu_harness::{Lab, GUEST_RUNTIME};

fn lab() -> &'static Lab {
    Lab::get(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .unwrap_or_else(|e| panic!("QEMU lab setup failed: {e}"))
}

/// The ELF file's PT_INTERP (its dynamic loader), or `None` for a static binary.
fn interpreter(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(
        &bytes[..4],
        b"\x7fELF",
        "{} is not an ELF file",
        path.display()
    );
    assert_eq!(bytes[4], 2, "{} is not a 64-bit ELF", path.display());
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..phnum).find_map(|i| {
        let o = phoff + i * phentsize;
        let kind = u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        (kind == PT_INTERP).then(|| {
            let (at, len) = (u64_at(o + 8), u64_at(o + 32));
            String::from_utf8_lossy(&bytes[at..at + len])
                .trim_end_matches('\0')
                .to_string()
        })
    })
}

#[test]
fn the_guest_binaries_build_and_find_their_runtime() {
    let started = Instant::now();
    let lab = lab();
    let engine: PathBuf = lab
        .engine()
        .expect("building the guests' fastpatch")
        .to_path_buf();
    eprintln!(
        "static guest binaries ready in {:.1} s: {} and {}",
        started.elapsed().as_secs_f64(),
        lab.init.display(),
        engine.display()
    );
    assert_eq!(
        interpreter(&lab.init),
        None,
        "{} needs a dynamic loader",
        lab.init.display()
    );
    // Both dynamic binaries the guests run: fastpatch and the engine daemon's own.
    let engined = engine.with_file_name("fastpatch-engined");
    for binary in [&engine, &engined] {
        runs_on_the_guest_runtime(binary);
    }
}

/// `binary`'s loader and every library it needs are in the runtime the guests get.
fn runs_on_the_guest_runtime(engine: &Path) {
    let loader = interpreter(engine).expect("the guests' binaries are linked dynamically");
    assert!(
        GUEST_RUNTIME.contains(&loader.as_str()),
        "{} asks for loader {loader}, which the guests do not get ({GUEST_RUNTIME:?})",
        engine.display()
    );
    // Every library it needs is in the runtime the guests get: ldd on the host, whose paths
    // are the guests' (both Debian bookworm, merged /usr).
    let out = std::process::Command::new("ldd")
        .arg(engine)
        .output()
        .expect("running ldd");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listing.contains("libc.so.6"),
        "ldd {} failed or listed no libc ({}): {listing}{}",
        engine.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for line in listing.lines() {
        let Some(lib) = line.split_whitespace().next() else {
            continue;
        };
        if lib.starts_with("linux-vdso") || lib.starts_with('/') {
            continue;
        }
        assert!(
            GUEST_RUNTIME
                .iter()
                .any(|p| p.ends_with(&format!("/{lib}"))),
            "{} needs {lib}, which the guests do not get: {listing}",
            engine.display()
        );
    }
}
