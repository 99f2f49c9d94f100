//! Slows down guessing of API tokens at the dashboard's login: after a few refused logins from
//! one address, further attempts from it are refused without a look at the token, for a wait
//! that doubles with each failure (capped). Kept in memory per server process: a restart or a
//! second process starts counting anew, which bounds the guess rate per process, not globally.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Refused logins allowed before any wait.
pub const FREE_FAILURES: u32 = 5;
/// The longest wait between attempts.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// An address that has not failed for this long starts from zero again.
pub const FORGET_AFTER: Duration = Duration::from_secs(900);
/// Addresses tracked before old ones are forgotten early.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Refused logins per client address.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

/// The wait after `count` refused logins: none for the first [`FREE_FAILURES`], then 1 s,
/// 2 s, 4 s, ... up to [`MAX_WAIT`].
pub fn wait_after(count: u32) -> Duration {
    if count < FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_FAILURES).min(16);
    Duration::from_secs(1u64 << doublings).min(MAX_WAIT)
}

impl LoginThrottle {
    /// How long `ip` must still wait before a login is looked at; `None`: it may try now.
    pub fn must_wait(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let f = map.get(&ip)?;
        let since = now.saturating_duration_since(f.last);
        if since >= FORGET_AFTER {
            return None;
        }
        let wait = wait_after(f.count);
        (since < wait).then(|| wait - since)
    }

    /// Records a refused login; returns how many `ip` has had in a row.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            map.retain(|_, f| now.saturating_duration_since(f.last) < FORGET_AFTER);
        }
        let f = map.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.saturating_duration_since(f.last) >= FORGET_AFTER {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
        f.count
    }

    /// A login that worked clears the address's count.
    pub fn succeeded(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_after_the_free_failures_and_are_capped() {
        assert_eq!(wait_after(FREE_FAILURES - 1), Duration::ZERO);
        assert_eq!(wait_after(FREE_FAILURES), Duration::from_secs(1));
        assert_eq!(wait_after(FREE_FAILURES + 3), Duration::from_secs(8));
        assert_eq!(wait_after(FREE_FAILURES + 40), MAX_WAIT);
    }

    #[test]
    fn an_address_waits_others_do_not_and_success_or_time_clears_it() {
        let t = LoginThrottle::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for n in 1..FREE_FAILURES {
            assert_eq!(t.failed(a, t0), n);
            assert_eq!(t.must_wait(a, t0), None, "no wait after {n} failures");
        }
        t.failed(a, t0);
        assert_eq!(t.must_wait(a, t0), Some(Duration::from_secs(1)));
        assert_eq!(
            t.must_wait(a, t0 + Duration::from_millis(400)),
            Some(Duration::from_millis(600))
        );
        assert_eq!(t.must_wait(a, t0 + Duration::from_secs(1)), None);
        assert_eq!(t.must_wait(b, t0), None, "another address is not slowed");
        t.failed(a, t0 + Duration::from_secs(1));
        assert_eq!(
            t.must_wait(a, t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(2))
        );
        // Long quiet: forgotten.
        let later = t0 + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(t.must_wait(a, later), None);
        assert_eq!(t.failed(a, later), 1);
        t.succeeded(a);
        assert_eq!(t.must_wait(a, later), None);
    }
}
