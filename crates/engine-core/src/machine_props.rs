//! Properties of the update machine over any sequence of inputs (proptest); the scenario
//! tests are in `machine_tests.rs`.

use proptest::prelude::*;

use crate::machine::*;
use crate::machine_tests::{fresh, offer};
use crate::report::ErrorCode;
use crate::status::UpdateStatus as S;

fn arb_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        any::<bool>().prop_map(|interactive| Input::CheckDue { interactive }),
        (
            prop_oneof![Just(None), Just(Some("2")), Just(Some("1"))],
            proptest::option::of(1u64..100)
        )
            .prop_map(|(v, poll_interval)| Input::CheckAnswered {
                reply: v.map_or(CheckReply::NoUpdate, |v| CheckReply::Update(offer(v))),
                poll_interval,
            }),
        any::<bool>().prop_map(|server_error| Input::CheckFailed { server_error }),
        (0u64..2000).prop_map(|received| Input::DownloadProgress { received }),
        Just(Input::DownloadFinished),
        Just(Input::InstallVerified),
        Just(Input::ExtensionsPlaced),
        Just(Input::Staged),
        (0u32..50).prop_map(|c| Input::Failed { code: ErrorCode(c) }),
        Just(Input::ErrorReported),
        Just(Input::ResetStatus),
        Just(Input::BootMarkedGood),
        Just(Input::HealthGateStarted),
        Just(Input::HealthGateEnded),
    ]
}

proptest! {
    #[test]
    fn invariants_hold_for_any_input_sequence(inputs in prop::collection::vec(arb_input(), 0..60)) {
        let mut e = fresh();
        for input in inputs {
            let was = e.status();
            let gate_before = e.health_gate_running();
            let scheduled = matches!(input, Input::CheckDue { interactive: false });
            let actions = e.step(input);
            for a in &actions {
                if let Action::SendEvents(ev) = a {
                    prop_assert!(!ev.is_empty(), "never an empty event request");
                }
                if was == S::UpdatedNeedReboot {
                    prop_assert!(!matches!(a, Action::StartInstall(_)), "no second install over a staged slot");
                }
                if gate_before && scheduled {
                    prop_assert!(!matches!(a, Action::SendUpdateCheck { .. }), "a scheduled check waits for the health gate");
                }
                if matches!(a, Action::StageSlot) {
                    prop_assert_eq!(was, S::Finalizing, "staged only after the extensions were placed");
                    prop_assert!(e.durable().staged.is_some(), "stage intent recorded first");
                }
            }
            let installing = |s: S| matches!(s, S::UpdateAvailable | S::Downloading | S::Verifying | S::Finalizing);
            if installing(was) && !installing(e.status()) {
                prop_assert!(actions.contains(&Action::DropInstall), "an attempt that ends is dropped: {:?}", actions);
            }
            prop_assert!((0.0..=1.0).contains(&e.progress()));
            if e.status() == S::UpdatedNeedReboot {
                prop_assert!(e.durable().staged.as_ref().is_some_and(|s| s.gpt_staged));
            }
        }
    }
}
