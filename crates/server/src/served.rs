//! Payload bytes sent, counted per package or delta id in memory and added to the
//! store with the last-check flush (and at shutdown). A crash loses at most one
//! flush period of counts; the counts are for the dashboard, not for billing.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct ServedBytes {
    pending: Mutex<HashMap<String, u64>>,
}

impl ServedBytes {
    pub fn add(&self, id: &str, bytes: u64) {
        let mut m = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(id.to_owned()).or_default() += bytes;
    }

    /// Everything counted so far; the counters start again from zero.
    pub fn take(&self) -> Vec<(String, u64)> {
        let mut m = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        m.drain().collect()
    }

    /// Returns counts that could not be written.
    pub fn put_back(&self, counts: Vec<(String, u64)>) {
        for (id, n) in counts {
            self.add(&id, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_survive_a_failed_write() {
        let s = ServedBytes::default();
        s.add("a", 10);
        s.add("a", 5);
        s.add("b", 1);
        let mut taken = s.take();
        taken.sort();
        assert_eq!(taken, [("a".to_owned(), 15), ("b".to_owned(), 1)]);
        assert!(s.take().is_empty());
        s.add("a", 1);
        s.put_back(taken);
        let mut again = s.take();
        again.sort();
        assert_eq!(again, [("a".to_owned(), 16), ("b".to_owned(), 1)]);
    }
}
