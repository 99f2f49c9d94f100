//! Crash at every durability point of the installer (fail-points), then check the slot is
//! not accepted (un-staged, first MiB not the new one) and that the next run completes.
#![cfg(feature = "failpoints")]

mod common;

use common::*;
use fastpatch_payload::install::Installer;
use fastpatch_payload::{PayloadError, FAIL_POINTS};

const MIB: usize = 1 << 20;

/// Points after which the slot has fully verified (a crash there leaves a complete image).
const AFTER_VERIFICATION: &[&str] = &[
    "payload::finish::before_head_sync",
    "payload::finish::before_state_clear",
];

#[test]
fn crash_at_every_durability_point_then_resume() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (image, payload) = signed_zstd_payload(dir.path(), 10 * MIB, 11);

    let mut cases: Vec<(&str, &str)> = FAIL_POINTS.iter().map(|p| (*p, "return")).collect();
    // The second atomic write is a checkpoint's state file (the first is the manifest).
    cases.push(("payload::state::before_rename", "1*off->return"));
    for (point, action) in cases {
        let case_dir = tempfile::tempdir().unwrap();
        let disk = standard_disk(case_dir.path());
        let before = attrs(&disk);
        let mut o = opts(vec![keys().public.clone()]);
        o.state_dir = Some(case_dir.path().join("state"));
        o.checkpoint_bytes = 2 * MIB as u64;

        fail::cfg(point, action).unwrap();
        let result = Installer::new(slot_b(&disk), o.clone()).and_then(|mut i| {
            i.feed(&payload)?;
            i.finish()
        });
        fail::remove(point);
        let err = result.expect_err(point);
        assert!(
            matches!(&err, PayloadError::Injected(p) if p == point),
            "{point}: unexpected {err}"
        );
        assert_eq!(attrs(&disk), before, "{point}: GPT attributes changed");
        if !AFTER_VERIFICATION.contains(&point) {
            assert_ne!(
                read_slot(&disk, usr_b(), MIB),
                image[..MIB],
                "{point}: new first MiB is on the slot"
            );
        }

        // The next attempt resumes where the last checkpoint was and completes.
        let mut again = Installer::new(slot_b(&disk), o).unwrap();
        let from = again.resume_offset() as usize;
        again.feed(&payload[from..]).unwrap();
        again
            .finish()
            .unwrap_or_else(|e| panic!("{point}: retry failed: {e}"));
        assert_eq!(read_slot(&disk, usr_b(), image.len()), image, "{point}");
    }
    scenario.teardown();
}
