//! The guest's static binaries (the initramfs `/init` and the `fastpatch` engine), built once
//! before the boot tests. `scripts/test` runs this target as its own phase, so the cold build
//! (many minutes on a fresh machine) shows in the log with its own time instead of hiding
//! inside the first boot test. Later runs find cargo's build up to date.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fastpatch_qemu_harness::Lab;

fn lab() -> &'static Lab {
    Lab::get(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .unwrap_or_else(|e| panic!("QEMU lab setup failed: {e}"))
}

/// True when the ELF file has no PT_INTERP program header (no dynamic loader needed).
fn is_static_elf(path: &Path) -> bool {
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
    !(0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) == PT_INTERP
    })
}

#[test]
fn the_guest_binaries_build_statically_linked() {
    let started = Instant::now();
    let lab = lab();
    let engine: PathBuf = lab
        .engine()
        .expect("building the static fastpatch")
        .to_path_buf();
    eprintln!(
        "static guest binaries ready in {:.1} s: {} and {}",
        started.elapsed().as_secs_f64(),
        lab.init.display(),
        engine.display()
    );
    for bin in [&lab.init, &engine] {
        assert!(
            is_static_elf(bin),
            "{} needs a dynamic loader",
            bin.display()
        );
    }
}
