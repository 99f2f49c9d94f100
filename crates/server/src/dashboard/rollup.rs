//! Chart history: a sampler has the store write every group's counts by status and by
//! version into `dashboard_samples` once a minute, at four resolutions
//! (`store::dashboard::sample`; why a rollup is explained there), and the chart ranges.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{debug, warn};

use super::Dash;
use crate::store::dashboard::sample;
use crate::AppState;

pub use crate::store::dashboard::TIERS;

/// How often the sampler runs.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// The chart ranges the group page offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Hour,
    Day,
    Week,
    Month,
}

impl Range {
    pub const ALL: [Range; 4] = [Range::Hour, Range::Day, Range::Week, Range::Month];

    pub fn parse(s: &str) -> Option<Range> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Range::Hour => "1h",
            Range::Day => "1d",
            Range::Week => "7d",
            Range::Month => "30d",
        }
    }
    pub fn span_secs(self) -> i64 {
        match self {
            Range::Hour => 3600,
            Range::Day => 86400,
            Range::Week => 7 * 86400,
            Range::Month => 30 * 86400,
        }
    }
    /// The tier a chart of this range reads: 60, 96, 168 and 120 points at most.
    pub fn res(self) -> i64 {
        match self {
            Range::Hour => 60,
            Range::Day => 900,
            Range::Week => 3600,
            Range::Month => 21600,
        }
    }
}

/// Runs the sampler every [`SAMPLE_EVERY`] while the server lives (it holds
/// only a weak reference and stops once the state is gone or the pool closed).
pub fn spawn_sampler(state: &Arc<AppState>, dash: Arc<Dash>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<AppState> = Arc::downgrade(state);
    rt.spawn(async move {
        let start = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut tick = tokio::time::interval_at(start, SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { break };
            if state.store.pool().is_closed() {
                break;
            }
            if let Err(e) = dash.ensure_schema(&state).await {
                warn!(error = %e, "dashboard: creating the samples table failed");
                continue;
            }
            let now = state.clock.now().timestamp();
            let started = std::time::Instant::now();
            match sample(&state.store, now).await {
                Ok(n) => debug!(
                    rows = n,
                    ms = started.elapsed().as_millis() as u64,
                    "dashboard sample taken"
                ),
                Err(e) if state.store.pool().is_closed() => {
                    debug!(error = %e, "dashboard sampler stops: database closed");
                    break;
                }
                Err(e) => warn!(error = %e, "dashboard sample failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip_and_fit_their_tiers() {
        for r in Range::ALL {
            assert_eq!(Range::parse(r.as_str()), Some(r));
            let points = r.span_secs() / r.res();
            assert!((60..=720).contains(&points), "{r:?}: {points}");
            let keep = TIERS.iter().find(|t| t.0 == r.res()).map(|t| t.1);
            assert!(keep.is_some_and(|k| k >= r.span_secs()), "{r:?}");
        }
        assert_eq!(Range::parse("2h"), None);
    }
}
