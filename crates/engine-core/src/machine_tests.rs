//! Every transition of the engine, without I/O.

use crate::machine::*;
use crate::report::{ErrorCode, Event};
use crate::state::{Phase, State};
use crate::status::UpdateStatus as S;

fn boot(version: &str, boot_id: &str, staged: bool) -> BootFacts {
    BootFacts {
        current_version: version.into(),
        boot_id: boot_id.into(),
        passive_slot_staged: staged,
        passive_slot_refused: false,
    }
}

pub(crate) fn offer(version: &str) -> UpdateOffer {
    UpdateOffer::new(
        version,
        vec![format!("http://127.0.0.1/{version}/update.gz")],
        "update.gz",
        1000,
        [7; 32],
    )
}

pub(crate) fn fresh() -> Engine {
    let (e, actions) = Engine::start(DurableState::default(), boot("1", "boot-1", false));
    assert_eq!(
        actions,
        vec![
            Action::Persist,
            Action::ScheduleCheck(CheckDelay::Initial),
            Action::PublishStatus
        ],
        "aleph version recorded on first start"
    );
    assert_eq!(e.durable().aleph_version.as_deref(), Some("1"));
    e
}

fn events_sent(actions: &[Action]) -> Vec<Event> {
    actions
        .iter()
        .flat_map(|a| match a {
            Action::SendEvents(ev) => ev.clone(),
            Action::SendUpdateCheck { events, .. } => events.clone(),
            _ => vec![],
        })
        .collect()
}

/// Drives a fresh engine through a whole successful update; returns it in NEED_REBOOT.
fn staged_engine() -> Engine {
    let mut e = fresh();
    let a = e.step(Input::CheckDue { interactive: false });
    assert_eq!(e.status(), S::CheckingForUpdate);
    assert_eq!(
        a[0],
        Action::SendUpdateCheck {
            events: vec![],
            interactive: false
        }
    );

    let a = e.step(Input::CheckAnswered {
        reply: CheckReply::Update(offer("2")),
        poll_interval: None,
    });
    assert_eq!(e.status(), S::UpdateAvailable);
    assert!(a.contains(&Action::StartInstall(offer("2"))));
    assert_eq!(events_sent(&a), vec![Event::download_started()]);
    assert_eq!(
        e.offered().map(|o| (o.version.as_str(), o.size)),
        Some(("2", 1000))
    );

    e.step(Input::DownloadProgress { received: 250 });
    assert_eq!((e.status(), e.progress()), (S::Downloading, 0.25));

    let a = e.step(Input::DownloadFinished);
    assert_eq!(e.status(), S::Verifying);
    assert!(a.contains(&Action::FinishInstall));
    assert_eq!(events_sent(&a), vec![Event::download_finished()]);

    let a = e.step(Input::InstallVerified);
    assert_eq!(e.status(), S::Finalizing);
    // The enabled system extensions are placed before anything is staged.
    assert_eq!(
        a,
        [Action::PlaceExtensions(offer("2")), Action::PublishStatus]
    );
    assert_eq!(e.durable().staged, None);
    assert_eq!(
        e.step(Input::Staged),
        [],
        "no table write was asked for yet"
    );

    let a = e.step(Input::ExtensionsPlaced);
    assert_eq!(e.status(), S::Finalizing);
    // The intent is durable before the table is touched.
    assert_eq!(a[..2], [Action::Persist, Action::StageSlot]);
    assert_eq!(
        e.durable().staged.as_ref().map(|s| s.gpt_staged),
        Some(false)
    );

    let a = e.step(Input::Staged);
    assert_eq!(e.status(), S::UpdatedNeedReboot);
    assert_eq!(a[0], Action::Persist);
    assert!(a.contains(&Action::DropInstall), "the attempt is over");
    assert!(
        !a.contains(&Action::RebootWhenReported),
        "locksmithd decides: {a:?}"
    );
    assert_eq!(events_sent(&a), vec![Event::installed()]);
    let staged = e.durable().staged.clone().unwrap();
    assert_eq!(
        (
            staged.version.as_str(),
            staged.from_version.as_str(),
            staged.gpt_staged
        ),
        ("2", "1", true)
    );
    e
}

#[test]
fn full_update_then_only_pings() {
    let mut e = staged_engine();
    assert_eq!(
        e.step(Input::CheckDue { interactive: true }),
        vec![Action::SendPing]
    );
    let a = e.step(Input::CheckAnswered {
        reply: CheckReply::Update(offer("3")),
        poll_interval: Some(60),
    });
    assert_eq!(
        a,
        vec![Action::ScheduleCheck(CheckDelay::Server { seconds: 60 })]
    );
    assert_eq!(
        e.status(),
        S::UpdatedNeedReboot,
        "no second install over a staged slot"
    );
}

#[test]
fn reboot_into_new_version_reports_complete_only_after_the_gate() {
    let staged = staged_engine().durable().clone();
    let (mut e, _) = Engine::start(staged, boot("2", "boot-2", false));
    assert!(e.awaiting_good_boot());
    let a = e.step(Input::CheckDue { interactive: false });
    assert_eq!(events_sent(&a), vec![], "3/2 waits for the health gate");
    e.step(Input::CheckAnswered {
        reply: CheckReply::NoUpdate,
        poll_interval: None,
    });

    assert_eq!(
        e.step(Input::BootMarkedGood),
        vec![
            Action::Persist,
            Action::PruneExtensions {
                keep: vec!["2".into(), "1".into()]
            },
            Action::ScheduleCheck(CheckDelay::Report)
        ],
        "older extensions go once the new version is good (the fallback's stay); \
         3/2 goes out soon, not at the next regular check"
    );
    assert_eq!(e.durable().staged, None);
    let a = e.step(Input::CheckDue { interactive: false });
    assert_eq!(events_sent(&a), vec![Event::update_complete("1")]);
    let a = e.step(Input::CheckAnswered {
        reply: CheckReply::NoUpdate,
        poll_interval: None,
    });
    assert!(
        a.contains(&Action::Persist),
        "acknowledged events are dropped durably"
    );
    assert!(e.durable().pending_events.is_empty());
    assert_eq!(
        e.step(Input::BootMarkedGood),
        vec![],
        "marking good twice reports nothing"
    );
}

#[test]
fn coming_back_on_the_old_version_reports_rollback_44() {
    let staged = staged_engine().durable().clone();
    let (mut e, actions) = Engine::start(staged, boot("1", "boot-3", false));
    assert!(actions.contains(&Action::Persist));
    assert!(
        actions.contains(&Action::ScheduleCheck(CheckDelay::Report)),
        "the rollback is reported early: {actions:?}"
    );
    assert!(!actions.contains(&Action::ScheduleCheck(CheckDelay::Initial)));
    assert_eq!(e.durable().staged, None);
    let a = e.step(Input::CheckDue { interactive: false });
    let sent = events_sent(&a);
    assert_eq!(sent, vec![Event::rolled_back("2")]);
    assert_eq!(sent[0].error_code, Some(ErrorCode::ROLLED_BACK));
}

#[test]
fn a_slot_the_chooser_refused_is_reported_as_such_not_as_a_rollback() {
    let staged = staged_engine().durable().clone();
    let refused = BootFacts {
        passive_slot_refused: true,
        ..boot("1", "boot-3", false)
    };
    let (mut e, actions) = Engine::start(staged, refused);
    assert!(actions.contains(&Action::ScheduleCheck(CheckDelay::Report)));
    assert_eq!(e.durable().staged, None);
    let sent = events_sent(&e.step(Input::CheckDue { interactive: false }));
    assert_eq!(sent, vec![Event::slot_refused("2")]);
    assert_eq!(
        sent[0].error_code,
        Some(ErrorCode::NEW_ROOTFS_VERIFICATION_ERROR)
    );
    assert_eq!(sent[0].previous_version.as_deref(), Some("2"));
}

#[test]
fn a_restart_without_reboot_keeps_need_reboot_only_if_the_table_says_so() {
    let staged = staged_engine().durable().clone();
    let (e, _) = Engine::start(staged.clone(), boot("1", "boot-1", true));
    assert_eq!(
        (e.status(), e.offered().map(|o| o.version.as_str())),
        (S::UpdatedNeedReboot, Some("2"))
    );

    let (e, actions) = Engine::start(staged, boot("1", "boot-1", false));
    assert_eq!(e.status(), S::Idle);
    assert_eq!(e.durable().staged, None);
    assert!(actions.contains(&Action::Persist));
}

#[test]
fn crash_between_intent_and_table_write_never_reports_a_false_rollback() {
    let mut e = fresh();
    e.step(Input::CheckDue { interactive: false });
    e.step(Input::CheckAnswered {
        reply: CheckReply::Update(offer("2")),
        poll_interval: None,
    });
    e.step(Input::DownloadFinished);
    e.step(Input::InstallVerified); // intent persisted, then the power went
    let (mut e, _) = Engine::start(e.durable().clone(), boot("1", "boot-2", false));
    assert_eq!(e.durable().staged, None);
    let a = e.step(Input::CheckDue { interactive: false });
    assert_eq!(events_sent(&a), vec![]);
}

#[test]
fn failures_in_every_busy_state_report_3_0_and_return_to_idle() {
    let steps: Vec<(S, Vec<Input>)> = vec![
        (
            S::CheckingForUpdate,
            vec![Input::CheckDue { interactive: false }],
        ),
        (
            S::UpdateAvailable,
            vec![
                Input::CheckDue { interactive: false },
                Input::CheckAnswered {
                    reply: CheckReply::Update(offer("2")),
                    poll_interval: None,
                },
            ],
        ),
        (
            S::Downloading,
            vec![
                Input::CheckDue { interactive: false },
                Input::CheckAnswered {
                    reply: CheckReply::Update(offer("2")),
                    poll_interval: None,
                },
                Input::DownloadProgress { received: 1 },
            ],
        ),
        (
            S::Verifying,
            vec![
                Input::CheckDue { interactive: false },
                Input::CheckAnswered {
                    reply: CheckReply::Update(offer("2")),
                    poll_interval: None,
                },
                Input::DownloadFinished,
            ],
        ),
        (
            S::Finalizing,
            vec![
                Input::CheckDue { interactive: false },
                Input::CheckAnswered {
                    reply: CheckReply::Update(offer("2")),
                    poll_interval: None,
                },
                Input::DownloadFinished,
                Input::InstallVerified,
            ],
        ),
    ];
    for (state, inputs) in steps {
        let mut e = fresh();
        for i in inputs {
            e.step(i);
        }
        assert_eq!(e.status(), state);
        let a = e.step(Input::Failed {
            code: ErrorCode::PAYLOAD_HASH_MISMATCH,
        });
        assert_eq!(e.status(), S::ReportingErrorEvent, "{state:?}");
        assert_eq!(
            events_sent(&a),
            vec![Event::error(ErrorCode::PAYLOAD_HASH_MISMATCH)],
            "{state:?}"
        );
        assert_eq!(
            e.durable().staged,
            None,
            "{state:?}: an unfinished stage intent is dropped"
        );
        e.step(Input::ErrorReported);
        assert_eq!(e.status(), S::Idle, "{state:?}");
    }
}

#[test]
fn server_errors_back_off_and_success_resets() {
    let mut e = fresh();
    for n in 1..=3 {
        e.step(Input::CheckDue { interactive: false });
        let a = e.step(Input::CheckFailed { server_error: true });
        assert!(a.contains(&Action::ScheduleCheck(CheckDelay::Backoff { failures: n })));
        assert_eq!(e.status(), S::Idle);
    }
    e.step(Input::CheckDue { interactive: false });
    let a = e.step(Input::CheckFailed {
        server_error: false,
    });
    assert!(
        a.contains(&Action::ScheduleCheck(CheckDelay::Regular)),
        "a 4xx is no reason to back off"
    );
    e.step(Input::CheckDue { interactive: false });
    e.step(Input::CheckAnswered {
        reply: CheckReply::NoUpdate,
        poll_interval: None,
    });
    assert_eq!(e.server_failures(), 0);
}

#[test]
fn same_version_offer_is_no_update_and_busy_checks_are_ignored() {
    let mut e = fresh();
    e.step(Input::CheckDue { interactive: false });
    e.step(Input::CheckAnswered {
        reply: CheckReply::Update(offer("1")),
        poll_interval: None,
    });
    assert_eq!(e.status(), S::Idle);
    e.step(Input::CheckDue { interactive: false });
    e.step(Input::CheckAnswered {
        reply: CheckReply::Update(offer("2")),
        poll_interval: None,
    });
    assert_eq!(e.step(Input::CheckDue { interactive: true }), vec![]);
    assert_eq!(e.status(), S::UpdateAvailable);
}

#[test]
fn scheduled_checks_wait_for_the_health_gate_and_interactive_ones_do_not() {
    let mut e = fresh();
    assert_eq!(e.step(Input::HealthGateStarted), []);
    assert_eq!(
        e.step(Input::CheckDue { interactive: false }),
        [Action::ScheduleCheck(CheckDelay::HealthGate)]
    );
    assert_eq!(e.status(), S::Idle);
    let a = e.step(Input::CheckDue { interactive: true });
    assert!(matches!(a[0], Action::SendUpdateCheck { .. }), "{a:?}");
    e.step(Input::CheckAnswered {
        reply: CheckReply::NoUpdate,
        poll_interval: None,
    });
    // The gate passes: checks go as usual.
    e.step(Input::BootMarkedGood);
    let a = e.step(Input::CheckDue { interactive: false });
    assert!(matches!(a[0], Action::SendUpdateCheck { .. }), "{a:?}");
    e.step(Input::CheckFailed {
        server_error: false,
    });
    // A gate that fails without marking good (report-only) stops holding checks too.
    e.step(Input::HealthGateStarted);
    e.step(Input::HealthGateEnded);
    let a = e.step(Input::CheckDue { interactive: false });
    assert!(matches!(a[0], Action::SendUpdateCheck { .. }), "{a:?}");
}

#[test]
fn reboot_after_update_reboots_once_the_installed_event_is_out() {
    let mut e = fresh();
    e.set_reboot_after_update(true);
    e.step(Input::CheckDue { interactive: false });
    e.step(Input::CheckAnswered {
        reply: CheckReply::Update(offer("2")),
        poll_interval: None,
    });
    e.step(Input::DownloadFinished);
    e.step(Input::InstallVerified);
    e.step(Input::ExtensionsPlaced);
    let a = e.step(Input::Staged);
    let send = a
        .iter()
        .position(|x| matches!(x, Action::SendEvents(_)))
        .expect("3/1 is sent");
    assert_eq!(a.last(), Some(&Action::RebootWhenReported), "{a:?}");
    assert!(
        send < a.len() - 1,
        "the reboot waits for the 3/1 queued before it"
    );
}

#[test]
fn an_extension_that_cannot_be_placed_fails_the_update_before_staging() {
    let mut e = fresh();
    e.step(Input::CheckDue { interactive: false });
    e.step(Input::CheckAnswered {
        reply: CheckReply::Update(offer("2")),
        poll_interval: None,
    });
    e.step(Input::DownloadFinished);
    e.step(Input::InstallVerified);
    let a = e.step(Input::Failed {
        code: ErrorCode::EXTENSION_ERROR,
    });
    assert!(!a.contains(&Action::StageSlot));
    assert_eq!(
        events_sent(&a),
        vec![Event::error(ErrorCode::EXTENSION_ERROR)]
    );
    assert_eq!(
        (e.status(), e.durable().staged.clone()),
        (S::ReportingErrorEvent, None)
    );
}

#[test]
fn reset_status_unstages_a_waiting_update() {
    let mut e = staged_engine();
    let a = e.step(Input::ResetStatus);
    assert_eq!(
        a,
        vec![Action::UnstageSlot, Action::Persist, Action::PublishStatus]
    );
    assert_eq!((e.status(), e.durable().staged.clone()), (S::Idle, None));
    // ResetStatus during a download is refused (nothing happens).
    let mut e = fresh();
    e.step(Input::CheckDue { interactive: false });
    e.step(Input::CheckAnswered {
        reply: CheckReply::Update(offer("2")),
        poll_interval: None,
    });
    assert_eq!(e.step(Input::ResetStatus), vec![]);
    assert_eq!(e.status(), S::UpdateAvailable);
}

#[test]
fn reports_left_from_the_last_run_go_out_early_but_not_over_a_staged_update() {
    let waiting = DurableState {
        aleph_version: Some("1".into()),
        staged: None,
        pending_events: vec![Event::update_complete("1")],
    };
    let (_, actions) = Engine::start(waiting.clone(), boot("2", "boot-5", false));
    assert!(actions.contains(&Action::ScheduleCheck(CheckDelay::Report)));

    // Restarted while an update waits for its reboot: pings only, so no early check.
    let mut staged = staged_engine().durable().clone();
    staged.pending_events = waiting.pending_events;
    let (e, actions) = Engine::start(staged, boot("1", "boot-1", true));
    assert_eq!(e.status(), S::UpdatedNeedReboot);
    assert!(actions.contains(&Action::ScheduleCheck(CheckDelay::Initial)));

    // A normal boot with nothing waiting: the regular first check.
    let (_, actions) = Engine::start(DurableState::default(), boot("1", "boot-6", false));
    assert!(actions.contains(&Action::ScheduleCheck(CheckDelay::Initial)));
}

#[test]
fn the_status_shows_the_last_offer_until_reset_and_progress_follows_the_phase() {
    use crate::status_report::{StatusSnapshot, NO_VERSION};
    let mut e = fresh();
    e.step(Input::CheckDue { interactive: false });
    e.step(Input::CheckAnswered {
        reply: CheckReply::Update(offer("2")),
        poll_interval: None,
    });
    e.step(Input::DownloadProgress { received: 2000 });
    assert_eq!(
        e.progress(),
        1.0,
        "more bytes than offered still reads 100 %"
    );
    assert!(matches!(
        e.state(),
        State::Installing {
            phase: Phase::Downloading { received: 2000 },
            ..
        }
    ));
    e.step(Input::Failed {
        code: ErrorCode::DOWNLOAD_TRANSFER_ERROR,
    });
    e.step(Input::ErrorReported);
    let snap = StatusSnapshot::of(&e, 7);
    assert_eq!(
        (
            snap.current_operation,
            snap.progress,
            snap.new_version.as_str(),
            snap.new_size
        ),
        (S::Idle, 0.0, "2", 1000),
        "as update_engine: the failed offer stays in the status"
    );
    e.step(Input::ResetStatus);
    assert_eq!(StatusSnapshot::of(&e, 7).new_version, NO_VERSION);
}
