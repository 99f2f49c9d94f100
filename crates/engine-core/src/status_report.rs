//! What GetStatus returns and `update_engine_client -status` prints, and how often the
//! StatusUpdate signal may fire. Pure.

use std::time::Duration;

use serde::Serialize;

use crate::machine::Engine;
use crate::status::UpdateStatus;

/// update_engine's placeholder when no new version is known.
pub const NO_VERSION: &str = "0.0.0.0";

/// The five values of GetStatus / StatusUpdate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusSnapshot {
    /// Unix seconds of the last successful check (0: never).
    pub last_checked_time: i64,
    pub progress: f64,
    pub current_operation: UpdateStatus,
    pub new_version: String,
    pub new_size: i64,
}

impl Default for StatusSnapshot {
    fn default() -> Self {
        StatusSnapshot {
            last_checked_time: 0,
            progress: 0.0,
            current_operation: UpdateStatus::Idle,
            new_version: NO_VERSION.to_string(),
            new_size: 0,
        }
    }
}

impl StatusSnapshot {
    pub fn of(engine: &Engine, last_checked_time: i64) -> StatusSnapshot {
        let (new_version, new_size) = match engine.offered() {
            Some(o) => (o.version.clone(), i64::try_from(o.size).unwrap_or(i64::MAX)),
            None => (NO_VERSION.to_string(), 0),
        };
        StatusSnapshot {
            last_checked_time,
            progress: engine.progress(),
            current_operation: engine.status(),
            new_version,
            new_size,
        }
    }

    /// Exactly what `update_engine_client -status` prints (C's `%f` gives six decimals).
    pub fn to_client_text(&self) -> String {
        format!(
            "LAST_CHECKED_TIME={}\nPROGRESS={:.6}\nCURRENT_OP={}\nNEW_VERSION={}\nNEW_SIZE={}\n",
            self.last_checked_time,
            self.progress,
            self.current_operation,
            self.new_version,
            self.new_size
        )
    }
}

/// StatusUpdate fires on every status change, and during progress at most every 1 % or 10 s.
#[derive(Debug, Clone)]
pub struct SignalThrottle {
    last: Option<(UpdateStatus, f64)>,
    since_last: Duration,
}

impl Default for SignalThrottle {
    fn default() -> Self {
        SignalThrottle {
            last: None,
            since_last: Duration::ZERO,
        }
    }
}

impl SignalThrottle {
    pub const MIN_PROGRESS_STEP: f64 = 0.01;
    pub const MAX_SILENCE: Duration = Duration::from_secs(10);

    /// Whether to emit now; `elapsed` is the time since the previous call.
    pub fn should_emit(&mut self, snapshot: &StatusSnapshot, elapsed: Duration) -> bool {
        self.since_last += elapsed;
        let emit = match self.last {
            None => true,
            Some((status, progress)) => {
                status != snapshot.current_operation
                    || (snapshot.progress - progress).abs() >= Self::MIN_PROGRESS_STEP
                    || (self.since_last >= Self::MAX_SILENCE && snapshot.progress != progress)
            }
        };
        if emit {
            self.last = Some((snapshot.current_operation, snapshot.progress));
            self.since_last = Duration::ZERO;
        }
        emit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_is_update_engine_format() {
        assert_eq!(
            StatusSnapshot::default().to_client_text(),
            "LAST_CHECKED_TIME=0\nPROGRESS=0.000000\nCURRENT_OP=UPDATE_STATUS_IDLE\nNEW_VERSION=0.0.0.0\nNEW_SIZE=0\n"
        );
        let s = StatusSnapshot {
            last_checked_time: 1700000000,
            progress: 0.25,
            current_operation: UpdateStatus::Downloading,
            new_version: "3732.0.0".into(),
            new_size: 382137917,
        };
        assert_eq!(
            s.to_client_text(),
            "LAST_CHECKED_TIME=1700000000\nPROGRESS=0.250000\nCURRENT_OP=UPDATE_STATUS_DOWNLOADING\nNEW_VERSION=3732.0.0\nNEW_SIZE=382137917\n"
        );
    }

    #[test]
    fn throttle_one_percent_or_ten_seconds() {
        let mut t = SignalThrottle::default();
        let mut s = StatusSnapshot {
            current_operation: UpdateStatus::Downloading,
            ..StatusSnapshot::default()
        };
        let ms = Duration::from_millis;
        assert!(t.should_emit(&s, ms(0)), "first one always");
        s.progress = 0.005;
        assert!(!t.should_emit(&s, ms(100)));
        s.progress = 0.0101;
        assert!(t.should_emit(&s, ms(100)), "1 % moved");
        s.progress = 0.012;
        assert!(!t.should_emit(&s, ms(9000)));
        assert!(t.should_emit(&s, ms(1000)), "10 s passed with movement");
        assert!(!t.should_emit(&s, ms(20000)), "no movement, no signal");
        s.current_operation = UpdateStatus::Verifying;
        assert!(t.should_emit(&s, ms(1)), "a status change always");
    }
}
