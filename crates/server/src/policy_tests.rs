use super::*;
use chrono::TimeZone;

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).single().unwrap()
}

struct Case {
    policy: GroupPolicy,
    counts: GroupCounts,
    instance: Option<InstanceView>,
    current: &'static str,
    channel: Option<&'static str>,
    floors: Vec<String>,
    now: DateTime<Utc>,
    machine: String,
}

impl Case {
    fn new() -> Self {
        Case {
            policy: GroupPolicy {
                safe_mode: false,
                ..GroupPolicy::default()
            },
            counts: GroupCounts::default(),
            instance: None,
            current: "3602.2.0",
            channel: Some("3732.0.0"),
            floors: vec![],
            now: at(2026, 3, 4, 12, 0),
            machine: "m1".into(),
        }
    }
    fn decide(&self) -> Decision {
        let has = |v: &str| v != "9999.0.0";
        decide(&CheckContext {
            now: self.now,
            machine_id: &self.machine,
            current_version: self.current,
            instance: self.instance.as_ref(),
            policy: &self.policy,
            channel_version: self.channel,
            floors: &self.floors,
            has_package: &has,
            counts: self.counts,
        })
    }
}

fn offer(v: &str, new_grant: bool) -> Decision {
    Decision::Offer {
        version: v.into(),
        new_grant,
    }
}

fn hold(reason: HoldReason) -> Decision {
    Decision::Hold {
        version: "3732.0.0".into(),
        reason,
    }
}

#[test]
fn update_available_and_up_to_date() {
    let mut c = Case::new();
    assert_eq!(c.decide(), offer("3732.0.0", true));
    c.current = "3732.0.0";
    assert_eq!(c.decide(), Decision::NoUpdate(NoUpdateReason::UpToDate));
    c.channel = None;
    assert_eq!(
        c.decide(),
        Decision::NoUpdate(NoUpdateReason::NoChannelVersion)
    );
}

#[test]
fn never_downgrade() {
    let mut c = Case::new();
    c.current = "3800.0.0";
    assert_eq!(
        c.decide(),
        Decision::NoUpdate(NoUpdateReason::WouldDowngrade)
    );
}

#[test]
fn missing_package_for_arch() {
    let mut c = Case::new();
    c.channel = Some("9999.0.0");
    assert_eq!(
        c.decide(),
        Decision::NoUpdate(NoUpdateReason::NoPackageForArch)
    );
}

#[test]
fn floors_are_served_first_lowest_first() {
    let mut c = Case::new();
    c.floors = vec![
        "3700.0.0".into(),
        "3650.0.0".into(),
        "3500.0.0".into(),
        "3800.0.0".into(),
    ];
    assert_eq!(c.decide(), offer("3650.0.0", true));
    c.current = "3650.0.0";
    assert_eq!(c.decide(), offer("3700.0.0", true));
    c.current = "3700.0.0";
    assert_eq!(c.decide(), offer("3732.0.0", true));
}

#[test]
fn max_per_period() {
    let mut c = Case::new();
    c.policy.max_updates_per_period = Some(2);
    c.counts.grants_in_period = 1;
    assert_eq!(c.decide(), offer("3732.0.0", true));
    c.counts.grants_in_period = 2;
    assert_eq!(c.decide(), hold(HoldReason::MaxPerPeriod));
}

#[test]
fn max_concurrent() {
    let mut c = Case::new();
    c.policy.max_concurrent = Some(3);
    c.counts.in_progress = 2;
    assert_eq!(c.decide(), offer("3732.0.0", true));
    c.counts.in_progress = 3;
    assert_eq!(c.decide(), hold(HoldReason::MaxConcurrent));
}

#[test]
fn live_grant_is_reoffered_without_counting() {
    let mut c = Case::new();
    c.policy.max_concurrent = Some(1);
    c.counts.in_progress = 1;
    c.instance = Some(InstanceView {
        status: InstanceStatus::Downloading,
        target_version: Some("3732.0.0".into()),
        granted_at: Some(c.now.timestamp() - 60),
    });
    assert_eq!(c.decide(), offer("3732.0.0", false));
}

#[test]
fn timeout() {
    let mut c = Case::new();
    c.policy.update_timeout_secs = 600;
    let inst = InstanceView {
        status: InstanceStatus::Granted,
        target_version: Some("3732.0.0".into()),
        granted_at: Some(c.now.timestamp() - 601),
    };
    assert!(timed_out(&inst, &c.policy, c.now));
    let fresh = InstanceView {
        granted_at: Some(c.now.timestamp() - 599),
        ..inst.clone()
    };
    assert!(!timed_out(&fresh, &c.policy, c.now));
    let done = InstanceView {
        status: InstanceStatus::Complete,
        ..inst.clone()
    };
    assert!(!timed_out(&done, &c.policy, c.now));
    // A timed-out grant is not re-offered for free: it needs a new grant.
    c.instance = Some(inst);
    assert_eq!(c.decide(), offer("3732.0.0", true));
}

#[test]
fn safe_mode_one_at_a_time_until_first_success() {
    let mut c = Case::new();
    c.policy.safe_mode = true;
    assert_eq!(c.decide(), offer("3732.0.0", true));
    c.counts.in_progress = 1;
    assert_eq!(c.decide(), hold(HoldReason::SafeModeWaiting));
    c.counts.target_succeeded = true;
    assert_eq!(c.decide(), offer("3732.0.0", true));
}

#[test]
fn safe_mode_halts_on_failure_and_halt_holds_everyone() {
    let p = GroupPolicy::default();
    assert!(p.safe_mode, "safe mode is on by default");
    assert!(event_halts_group(&p, EventKind::RolledBack));
    assert!(event_halts_group(
        &p,
        EventKind::Error(fastpatch_omaha::ErrorCode(10))
    ));
    assert!(!event_halts_group(&p, EventKind::Installed));
    let off = GroupPolicy {
        safe_mode: false,
        ..p
    };
    assert!(!event_halts_group(&off, EventKind::RolledBack));

    let mut c = Case::new();
    c.policy.halted = true;
    assert_eq!(c.decide(), hold(HoldReason::Halted));
    // Even a machine holding a grant stops receiving the update.
    c.instance = Some(InstanceView {
        status: InstanceStatus::Granted,
        target_version: Some("3732.0.0".into()),
        granted_at: Some(c.now.timestamp()),
    });
    assert_eq!(c.decide(), hold(HoldReason::Halted));
}

#[test]
fn updates_disabled() {
    let mut c = Case::new();
    c.policy.updates_enabled = false;
    assert_eq!(c.decide(), hold(HoldReason::UpdatesDisabled));
}

fn weekdays_9_to_5(tz: Tz) -> OfficeHours {
    OfficeHours {
        tz,
        days: 0b0011111,
        start_minute: 9 * 60,
        end_minute: 17 * 60,
    }
}

#[test]
fn office_hours_across_dst_change() {
    // New York switches to daylight time on Sunday 2026-03-08.
    let oh = weekdays_9_to_5(chrono_tz::America::New_York);
    // Friday before: EST (UTC-5). 13:30 UTC = 08:30 local, 14:30 UTC = 09:30 local.
    assert!(!oh.contains(at(2026, 3, 6, 13, 30)));
    assert!(oh.contains(at(2026, 3, 6, 14, 30)));
    assert!(oh.contains(at(2026, 3, 6, 21, 59)));
    assert!(!oh.contains(at(2026, 3, 6, 22, 0)));
    // Monday after: EDT (UTC-4). 13:30 UTC = 09:30 local, 21:30 UTC = 17:30 local.
    assert!(oh.contains(at(2026, 3, 9, 13, 30)));
    assert!(!oh.contains(at(2026, 3, 9, 21, 30)));
    assert!(oh.contains(at(2026, 3, 9, 20, 59)));
    // The weekend is closed.
    assert!(!oh.contains(at(2026, 3, 7, 15, 0)));
    assert!(!oh.contains(at(2026, 3, 8, 15, 0)));

    let mut c = Case::new();
    c.policy.office_hours = Some(oh);
    c.now = at(2026, 3, 9, 13, 30);
    assert_eq!(c.decide(), offer("3732.0.0", true));
    c.now = at(2026, 3, 6, 13, 30);
    assert_eq!(c.decide(), hold(HoldReason::OutsideOfficeHours));
}

#[test]
fn office_hours_custom_days_and_overnight_window() {
    // Saturday and Sunday 22:00–04:00 Berlin time.
    let oh = OfficeHours {
        tz: chrono_tz::Europe::Berlin,
        days: 0b1100000,
        start_minute: 22 * 60,
        end_minute: 4 * 60,
    };
    // Saturday 2026-03-07 22:30 CET = 21:30 UTC.
    assert!(oh.contains(at(2026, 3, 7, 21, 30)));
    // Sunday 03:00 local (window opened Saturday).
    assert!(oh.contains(at(2026, 3, 8, 2, 0)));
    // Monday 03:00 local (window opened Sunday).
    assert!(oh.contains(at(2026, 3, 9, 2, 0)));
    // Tuesday 03:00 local: Monday's window is not configured.
    assert!(!oh.contains(at(2026, 3, 10, 2, 0)));
    // Saturday noon.
    assert!(!oh.contains(at(2026, 3, 7, 11, 0)));
}

#[test]
fn staged_rollout_distribution_within_two_percent() {
    let start = at(2026, 3, 4, 0, 0);
    let policy = GroupPolicy {
        rollout_duration_secs: 10 * 3600,
        rollout_started_at: start.timestamp(),
        ..GroupPolicy::default()
    };
    let ids: Vec<String> = (0..10_000).map(|i| format!("{i:032x}")).collect();
    for (hours, expected) in [(0, 0.0), (1, 0.1), (5, 0.5), (9, 0.9), (10, 1.0), (20, 1.0)] {
        let now = start + Duration::hours(hours);
        let frac = rollout_fraction(&policy, now);
        assert!((frac - expected).abs() < 1e-9);
        let eligible =
            ids.iter().filter(|id| rollout_place(id) < frac).count() as f64 / ids.len() as f64;
        assert!(
            (eligible - expected).abs() <= 0.02,
            "at {hours}h: {eligible} eligible, expected {expected}"
        );
    }
    // Deterministic and monotonic: a machine once in stays in.
    let early = rollout_fraction(&policy, start + Duration::hours(3));
    let late = rollout_fraction(&policy, start + Duration::hours(6));
    for id in &ids {
        assert_eq!(rollout_place(id), rollout_place(id));
        if rollout_place(id) < early {
            assert!(rollout_place(id) < late);
        }
    }

    let mut c = Case::new();
    c.policy = policy;
    c.now = start + Duration::hours(5);
    let (inside, outside): (Vec<_>, Vec<_>) =
        ids.iter().take(200).partition(|id| rollout_place(id) < 0.5);
    c.machine = inside[0].clone();
    c.policy.safe_mode = false;
    assert_eq!(c.decide(), offer("3732.0.0", true));
    c.machine = outside[0].clone();
    assert_eq!(c.decide(), hold(HoldReason::RolloutNotReached));
}

#[test]
fn event_status_transitions() {
    use fastpatch_omaha::{ErrorCode, EventKind as K};
    assert_eq!(
        status_after_event(K::DownloadStarted),
        Some(InstanceStatus::Downloading)
    );
    assert_eq!(
        status_after_event(K::Downloaded),
        Some(InstanceStatus::Downloaded)
    );
    assert_eq!(
        status_after_event(K::Installed),
        Some(InstanceStatus::Installed)
    );
    assert_eq!(
        status_after_event(K::UpdateComplete),
        Some(InstanceStatus::Complete)
    );
    assert_eq!(
        status_after_event(K::RolledBack),
        Some(InstanceStatus::Error)
    );
    assert_eq!(
        status_after_event(K::Error(ErrorCode(9))),
        Some(InstanceStatus::Error)
    );
    assert_eq!(status_after_event(K::Deferred), None);
    for s in InstanceStatus::ALL {
        assert_eq!(InstanceStatus::parse(s.as_str()), Some(s));
        assert_eq!(
            s.in_progress(),
            InstanceStatus::IN_PROGRESS.contains(&s.as_str())
        );
    }
}

#[test]
fn status_names_pad_and_unknown_names_list_the_known_ones() {
    assert_eq!(format!("[{:<9}]", InstanceStatus::OnHold), "[on-hold  ]");
    let err = "bogus".parse::<InstanceStatus>().expect_err("not a status");
    assert_eq!(
        err.to_string(),
        "unknown instance status \"bogus\" (one of: undefined, granted, downloading, downloaded, installed, complete, error, on-hold)"
    );
    for s in InstanceStatus::ALL {
        assert_eq!(s.as_str().parse::<InstanceStatus>(), Ok(s));
    }
}
