//! When to check next. Pure: the caller supplies a uniform random number, so tests need no
//! real clock and no real randomness.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::machine::CheckDelay;

/// The check timing (defaults are update_engine's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduleConfig {
    /// First check this long after start ...
    #[serde(with = "secs")]
    pub initial: Duration,
    /// ... plus or minus up to this much.
    #[serde(with = "secs")]
    pub initial_fuzz: Duration,
    #[serde(with = "secs")]
    pub interval: Duration,
    #[serde(with = "secs")]
    pub interval_fuzz: Duration,
    /// Backoff after server errors doubles the interval up to this.
    #[serde(with = "secs")]
    pub backoff_max: Duration,
    /// A check carrying waiting reports (3/2, 44) happens this long after they arose
    /// (unfuzzed; long enough for the network to come up after boot).
    #[serde(with = "secs")]
    pub report_delay: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            initial: Duration::from_secs(7 * 60),
            initial_fuzz: Duration::from_secs(5 * 60),
            interval: Duration::from_secs(45 * 60),
            interval_fuzz: Duration::from_secs(5 * 60),
            backoff_max: Duration::from_secs(4 * 3600),
            report_delay: Duration::from_secs(60),
        }
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

/// Spreads `base` by ±`fuzz` using `unit` (uniform in [0, 1)).
fn fuzzed(base: Duration, fuzz: Duration, unit: f64) -> Duration {
    let unit = unit.clamp(0.0, 1.0);
    let offset = fuzz.as_secs_f64() * (2.0 * unit - 1.0);
    Duration::from_secs_f64((base.as_secs_f64() + offset).max(0.0))
}

/// The delay before the next check.
/// How soon a check deferred by a running health gate looks again.
pub const HEALTH_GATE_RECHECK: Duration = Duration::from_secs(30);

pub fn next_delay(cfg: &ScheduleConfig, kind: CheckDelay, unit: f64) -> Duration {
    match kind {
        CheckDelay::Initial => fuzzed(cfg.initial, cfg.initial_fuzz, unit),
        CheckDelay::Regular => fuzzed(cfg.interval, cfg.interval_fuzz, unit),
        CheckDelay::Backoff { failures } => {
            let factor = 2u32.saturating_pow(failures.min(16));
            let base = cfg.interval.saturating_mul(factor).min(cfg.backoff_max);
            // Fuzz, but never past the cap.
            fuzzed(base, cfg.interval_fuzz, unit).min(cfg.backoff_max)
        }
        CheckDelay::Server { seconds } => Duration::from_secs(seconds.max(1)),
        CheckDelay::HealthGate => HEALTH_GATE_RECHECK,
        // Never later than the first regular check would have been.
        CheckDelay::Report => cfg.report_delay.min(cfg.initial),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: u64 = 60;

    #[test]
    fn a_check_held_by_the_health_gate_looks_again_in_30_s() {
        let c = ScheduleConfig::default();
        assert_eq!(
            next_delay(&c, CheckDelay::HealthGate, 0.9),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn update_engine_defaults() {
        let c = ScheduleConfig::default();
        assert_eq!(
            next_delay(&c, CheckDelay::Initial, 0.5),
            Duration::from_secs(7 * MIN)
        );
        assert_eq!(
            next_delay(&c, CheckDelay::Initial, 0.0),
            Duration::from_secs(2 * MIN)
        );
        assert_eq!(
            next_delay(&c, CheckDelay::Regular, 1.0),
            Duration::from_secs(50 * MIN)
        );
        assert_eq!(
            next_delay(&c, CheckDelay::Backoff { failures: 1 }, 0.5),
            Duration::from_secs(90 * MIN)
        );
        assert_eq!(
            next_delay(&c, CheckDelay::Backoff { failures: 2 }, 0.5),
            Duration::from_secs(180 * MIN)
        );
        assert_eq!(
            next_delay(&c, CheckDelay::Backoff { failures: 3 }, 0.5),
            Duration::from_secs(240 * MIN)
        );
        assert_eq!(
            next_delay(&c, CheckDelay::Backoff { failures: 400 }, 1.0),
            Duration::from_secs(240 * MIN)
        );
        assert_eq!(
            next_delay(&c, CheckDelay::Server { seconds: 30 }, 0.9),
            Duration::from_secs(30)
        );
        assert_eq!(
            next_delay(&c, CheckDelay::Report, 0.9),
            Duration::from_secs(60)
        );
        let at_once = ScheduleConfig {
            initial: Duration::ZERO,
            ..ScheduleConfig::default()
        };
        assert_eq!(
            next_delay(&at_once, CheckDelay::Report, 0.9),
            Duration::ZERO,
            "a report never waits longer than the first check"
        );
    }

    proptest! {
        #[test]
        fn delays_stay_in_their_windows(unit in 0.0f64..1.0, failures in 0u32..100) {
            let c = ScheduleConfig::default();
            let initial = next_delay(&c, CheckDelay::Initial, unit).as_secs_f64();
            prop_assert!((120.0..=720.0).contains(&initial));
            let regular = next_delay(&c, CheckDelay::Regular, unit).as_secs_f64();
            prop_assert!((40.0 * 60.0..=50.0 * 60.0).contains(&regular));
            let back = next_delay(&c, CheckDelay::Backoff { failures }, unit);
            prop_assert!(back <= c.backoff_max);
            prop_assert!(back >= Duration::from_secs(40 * 60));
        }
    }
}
