//! Which payload URL to try next: each in order, up to N failures per URL (Omaha
//! `MaxFailureCountPerUrl`, default 10), then the next one.

/// Tracks download failures across an offer's URLs.
#[derive(Debug, Clone)]
pub struct UrlRotation {
    urls: Vec<String>,
    max_failures_per_url: u32,
    current: usize,
    failures: u32,
}

impl UrlRotation {
    pub const DEFAULT_MAX_FAILURES: u32 = 10;

    pub fn new(urls: Vec<String>, max_failures_per_url: u32) -> UrlRotation {
        UrlRotation {
            urls,
            max_failures_per_url: max_failures_per_url.max(1),
            current: 0,
            failures: 0,
        }
    }

    /// The URL to use now, or `None` when every URL has used up its failures.
    pub fn current(&self) -> Option<&str> {
        self.urls.get(self.current).map(String::as_str)
    }

    /// Records a failure of the current URL; moves on once it reached its limit.
    pub fn record_failure(&mut self) {
        self.failures += 1;
        if self.failures >= self.max_failures_per_url {
            self.current += 1;
            self.failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_url_gets_its_failures_then_the_next() {
        let mut r = UrlRotation::new(vec!["a".into(), "b".into()], 2);
        assert_eq!(r.current(), Some("a"));
        r.record_failure();
        assert_eq!(r.current(), Some("a"));
        r.record_failure();
        assert_eq!(r.current(), Some("b"));
        r.record_failure();
        r.record_failure();
        assert_eq!(r.current(), None);
        assert_eq!(UrlRotation::new(vec![], 3).current(), None);
    }
}
