//! Property tests of the payload parser (a bounded fuzz that runs in `cargo test`): arbitrary
//! bytes never panic, any change to a valid payload is refused, any split of the input
//! parses the same.

use crate::common;

use std::sync::OnceLock;

use common::*;
use fastpatch_payload::format::encode_header;
use fastpatch_payload::generate::Compression;
use fastpatch_payload::stream::{Demux, Item};
use fastpatch_payload::verify;
use proptest::prelude::*;

fn valid() -> &'static Vec<u8> {
    static PAYLOAD: OnceLock<Vec<u8>> = OnceLock::new();
    PAYLOAD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("usr.img");
        make_image(&img, 3 << 19, 21); // 1.5 MiB: two operations
        let out = dir.path().join("p");
        generate(&img, &out, Compression::Zstd, &[keys().private.clone()]);
        std::fs::read(out).unwrap()
    })
}

/// Runs the parser over `data` cut at `splits`; returns a summary of what came out.
fn parse(data: &[u8], splits: &[usize], slot_len: Option<u64>) -> Result<Vec<String>, String> {
    let mut demux = Demux::new(slot_len, false);
    let mut seen = Vec::new();
    let mut sink = |item: Item| {
        seen.push(match item {
            Item::Manifest { plan, .. } => format!("manifest {} ops", plan.ops.len()),
            Item::OpData { op, data, resume } => {
                format!("op {op} {} bytes, resume at {}", data.len(), resume.offset)
            }
            Item::Signatures { blob, digest } => {
                format!("sig {} {}", blob.len(), hex::encode(digest))
            }
        });
        Ok(())
    };
    let mut pos = 0;
    let mut cuts: Vec<usize> = splits.iter().map(|s| s % (data.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(data.len());
    for cut in cuts {
        demux
            .push(&data[pos..cut], &mut sink)
            .map_err(|e| e.to_string())?;
        pos = cut;
    }
    demux.finish(&mut sink).map_err(|e| e.to_string())?;
    Ok(seen)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048), splits in proptest::collection::vec(any::<usize>(), 0..4)) {
        let _ = parse(&data, &splits, Some(1 << 30));
    }

    #[test]
    fn arbitrary_manifest_after_a_valid_header_never_panics(body in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut data = encode_header(body.len() as u64).to_vec();
        data.extend_from_slice(&body);
        let _ = parse(&data, &[], Some(64 << 20));
        let _ = verify::verify(data.as_slice(), &[keys().public.clone()]);
    }

    #[test]
    fn any_single_byte_change_is_refused(at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let mut p = valid().clone();
        let i = at.index(p.len());
        p[i] ^= xor;
        prop_assert!(verify::verify(p.as_slice(), &[keys().public.clone()]).is_err(), "byte {} ^ {:#x} accepted", i, xor);
    }

    #[test]
    fn any_truncation_is_refused(at in any::<prop::sample::Index>()) {
        let p = valid();
        let n = at.index(p.len());
        prop_assert!(verify::verify(&p[..n], &[keys().public.clone()]).is_err());
    }

    #[test]
    fn any_split_parses_the_same(splits in proptest::collection::vec(any::<usize>(), 0..8)) {
        let whole = parse(valid(), &[], None).unwrap();
        prop_assert_eq!(parse(valid(), &splits, None).unwrap(), whole);
    }
}

#[test]
fn the_fixture_itself_verifies() {
    verify::verify(valid().as_slice(), &[keys().public.clone()]).unwrap();
    assert_eq!(parse(valid(), &[], None).unwrap().len(), 4); // manifest, 2 ops, signature
}
