//! The health gate: whether to mark the running boot good, wait, or give up on it. Pure.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What to do when the checks do not pass in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnUnhealthy {
    /// Reboot, so the boot chooser falls back to the previous slot.
    Reboot,
    /// Only report; a person decides.
    ReportOnly,
}

/// The gate's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthDecision {
    MarkGood,
    /// Check again later.
    Wait,
    Reboot {
        reason: String,
    },
    ReportOnly {
        reason: String,
    },
    /// The booted slot is already marked good: nothing to do.
    AlreadyGood,
}

/// The outcome of one round of health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthObservation {
    /// Names of the checks that did not pass, with why.
    pub failing: Vec<String>,
    /// The failures are final (the boot's own health checks already gave up, e.g. the unit
    /// that runs them before `boot-complete.target` failed): decide now, do not wait.
    pub settled: bool,
}

impl HealthObservation {
    /// Checks that may still pass on a later round.
    pub fn pending(failing: Vec<String>) -> HealthObservation {
        HealthObservation {
            failing,
            settled: false,
        }
    }
}

/// Decides for the booted slot. `booted_successful` is the slot's GPT flag: a slot that was
/// marked good before is a normal boot (mark right away); one that was not is the first boot
/// after an update and must pass the checks within `timeout`.
pub fn decide(
    booted_successful: bool,
    observation: &HealthObservation,
    elapsed: Duration,
    timeout: Duration,
    on_unhealthy: OnUnhealthy,
) -> HealthDecision {
    if booted_successful {
        return HealthDecision::AlreadyGood;
    }
    if observation.failing.is_empty() {
        return HealthDecision::MarkGood;
    }
    let reason = if observation.settled {
        format!("health checks failed: {}", observation.failing.join("; "))
    } else if elapsed < timeout {
        return HealthDecision::Wait;
    } else {
        format!(
            "health checks still failing after {}s: {}",
            elapsed.as_secs(),
            observation.failing.join("; ")
        )
    };
    match on_unhealthy {
        OnUnhealthy::Reboot => HealthDecision::Reboot { reason },
        OnUnhealthy::ReportOnly => HealthDecision::ReportOnly { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(failing: &[&str]) -> HealthObservation {
        HealthObservation {
            settled: false,
            failing: failing.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn gate_decisions() {
        let t = Duration::from_secs(600);
        let at = |s| Duration::from_secs(s);
        assert_eq!(
            decide(true, &obs(&["x"]), at(0), t, OnUnhealthy::Reboot),
            HealthDecision::AlreadyGood
        );
        assert_eq!(
            decide(false, &obs(&[]), at(0), t, OnUnhealthy::Reboot),
            HealthDecision::MarkGood
        );
        assert_eq!(
            decide(
                false,
                &obs(&["sshd.service inactive"]),
                at(599),
                t,
                OnUnhealthy::Reboot
            ),
            HealthDecision::Wait
        );
        match decide(
            false,
            &obs(&["sshd.service inactive"]),
            at(600),
            t,
            OnUnhealthy::Reboot,
        ) {
            HealthDecision::Reboot { reason } => {
                assert!(reason.contains("sshd.service inactive"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(false, &obs(&["check"]), at(601), t, OnUnhealthy::ReportOnly),
            HealthDecision::ReportOnly { .. }
        ));
    }

    #[test]
    fn a_settled_failure_is_decided_at_once_and_a_pass_still_wins() {
        let t = Duration::from_secs(600);
        let settled = HealthObservation {
            failing: vec!["fastpatch-health-check.service failed".into()],
            settled: true,
        };
        match decide(false, &settled, Duration::ZERO, t, OnUnhealthy::Reboot) {
            HealthDecision::Reboot { reason } => assert_eq!(
                reason,
                "health checks failed: fastpatch-health-check.service failed"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(false, &settled, Duration::ZERO, t, OnUnhealthy::ReportOnly),
            HealthDecision::ReportOnly { .. }
        ));
        assert_eq!(
            decide(true, &settled, Duration::ZERO, t, OnUnhealthy::Reboot),
            HealthDecision::AlreadyGood
        );
        let passed = HealthObservation {
            failing: vec![],
            settled: true,
        };
        assert_eq!(
            decide(false, &passed, Duration::ZERO, t, OnUnhealthy::Reboot),
            HealthDecision::MarkGood
        );
        assert!(!HealthObservation::pending(vec!["x".into()]).settled);
    }
}
