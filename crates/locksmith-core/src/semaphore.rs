//! The semaphore value stored in etcd, exactly as locksmith stores it.
//!
//! `{"semaphore":<available>,"max":<n>,"holders":[..sorted machine ids..]}`; a fresh key written
//! by locksmith has `"holders":null`, which we read and (like locksmith) write back as long as
//! nobody has locked yet. Pure: no I/O.

use serde::Deserialize;

/// Errors of the semaphore operations. The `Display` texts of the first two are locksmith's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SemaphoreError {
    /// No slot left (locksmith: `semaphore is at 0`).
    #[error("semaphore is at {0}")]
    Full(i64),
    /// Unlock of an id that does not hold the lock (locksmith's text).
    #[error("holder does not exist")]
    NotHolder,
    /// `set-max` below the current number of holders (locksmith made the count negative).
    #[error(
        "cannot set max to {requested}: {holders} machine(s) hold the lock; unlock some first"
    )]
    MaxBelowHolders { requested: i64, holders: usize },
    /// A negative max.
    #[error("max must be at least 0, got {0}")]
    NegativeMax(i64),
    /// The stored value is not locksmith's JSON.
    #[error("semaphore value is not valid JSON: {0}")]
    Decode(String),
    /// The change would take the available count beyond what a 64-bit count holds (a
    /// hand-edited value, or an absurd max).
    #[error("the semaphore's available count ({semaphore}) cannot be changed by {by}")]
    CountOverflow { semaphore: i64, by: String },
}

/// The semaphore as stored: available count, max, holders.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Semaphore {
    /// Slots available (locksmith's field name `semaphore`).
    #[serde(default)]
    pub semaphore: i64,
    /// Slots in total.
    #[serde(default)]
    pub max: i64,
    /// Machine ids holding a slot, sorted. `None` encodes as `null` (a never-locked key).
    #[serde(default)]
    pub holders: Option<Vec<String>>,
}

/// What a `lock` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOutcome {
    /// A slot was taken.
    Taken,
    /// The id already held a slot; nothing changed (locksmith returned `holder exists`).
    AlreadyHeld,
}

impl Default for Semaphore {
    fn default() -> Self {
        Self::fresh()
    }
}

impl Semaphore {
    /// The value locksmith creates for an absent key: max 1, no holders (`null`).
    pub fn fresh() -> Self {
        Semaphore {
            semaphore: 1,
            max: 1,
            holders: None,
        }
    }

    /// Parses a stored value. Holders are re-sorted and de-duplicated (locksmith keeps them sorted;
    /// a hand-edited key may not be).
    pub fn decode(bytes: &[u8]) -> Result<Self, SemaphoreError> {
        let mut sem: Semaphore =
            serde_json::from_slice(bytes).map_err(|e| SemaphoreError::Decode(e.to_string()))?;
        if let Some(h) = sem.holders.as_mut() {
            h.sort();
            h.dedup();
        }
        Ok(sem)
    }

    /// Encodes exactly as Go's `encoding/json` does for locksmith's struct: compact, fields in
    /// the order semaphore, max, holders; `null` for no holder list; HTML-safe string escapes.
    pub fn encode(&self) -> String {
        let mut out = format!(
            "{{\"semaphore\":{},\"max\":{},\"holders\":",
            self.semaphore, self.max
        );
        match &self.holders {
            None => out.push_str("null"),
            Some(h) => {
                out.push('[');
                for (i, id) in h.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    go_json_string(&mut out, id);
                }
                out.push(']');
            }
        }
        out.push('}');
        out
    }

    /// The holders (empty for `null`).
    pub fn holders(&self) -> &[String] {
        self.holders.as_deref().unwrap_or(&[])
    }

    /// Whether `id` holds a slot.
    pub fn is_holder(&self, id: &str) -> bool {
        self.holders()
            .binary_search_by(|h| h.as_str().cmp(id))
            .is_ok()
    }

    /// Takes a slot for `id`. Re-locking by a current holder succeeds without change (fixes
    /// locksmith#58, where a holder re-locking a full semaphore failed).
    pub fn lock(&mut self, id: &str) -> Result<LockOutcome, SemaphoreError> {
        let holders = self.holders.get_or_insert_with(Vec::new);
        match holders.binary_search_by(|h| h.as_str().cmp(id)) {
            Ok(_) => Ok(LockOutcome::AlreadyHeld),
            Err(pos) => {
                if self.semaphore <= 0 {
                    return Err(SemaphoreError::Full(self.semaphore));
                }
                holders.insert(pos, id.to_string());
                self.semaphore -= 1;
                Ok(LockOutcome::Taken)
            }
        }
    }

    /// Releases `id`'s slot (locksmith's `holder does not exist` if it holds none).
    pub fn unlock(&mut self, id: &str) -> Result<(), SemaphoreError> {
        let Some(holders) = self.holders.as_mut() else {
            return Err(SemaphoreError::NotHolder);
        };
        match holders.binary_search_by(|h| h.as_str().cmp(id)) {
            Ok(pos) => {
                let semaphore =
                    self.semaphore
                        .checked_add(1)
                        .ok_or(SemaphoreError::CountOverflow {
                            semaphore: self.semaphore,
                            by: "+1".into(),
                        })?;
                holders.remove(pos);
                self.semaphore = semaphore;
                Ok(())
            }
            Err(_) => Err(SemaphoreError::NotHolder),
        }
    }

    /// Changes the number of slots; returns the old max. Refuses a max below the number of
    /// current holders instead of making the available count negative (locksmith's bug).
    pub fn set_max(&mut self, max: i64) -> Result<i64, SemaphoreError> {
        if max < 0 {
            return Err(SemaphoreError::NegativeMax(max));
        }
        let holders = self.holders().len();
        if (max as u128) < holders as u128 {
            return Err(SemaphoreError::MaxBelowHolders {
                requested: max,
                holders,
            });
        }
        let old = self.max;
        // Same arithmetic as locksmith (shift both counts by the difference).
        let semaphore = max
            .checked_sub(old)
            .and_then(|d| self.semaphore.checked_add(d))
            .ok_or_else(|| SemaphoreError::CountOverflow {
                semaphore: self.semaphore,
                by: format!("{max} - {old}"),
            })?;
        self.semaphore = semaphore;
        self.max = max;
        Ok(old)
    }
}

/// Appends `s` as a JSON string the way Go's encoding/json writes it (HTML escaping on).
fn go_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    // Found by the fuzz target (fuzz/fuzz_targets/semaphore.rs): counts near i64's limits in a
    // hand-edited value overflowed (a panic in debug builds, a wrapped count in release).
    #[test]
    fn counts_that_would_overflow_are_refused_and_change_nothing() {
        let mut s =
            Semaphore::decode(br#"{"semaphore":9223372036854775807,"max":1,"holders":["a"]}"#)
                .unwrap();
        let before = s.clone();
        assert!(matches!(
            s.unlock("a"),
            Err(SemaphoreError::CountOverflow { .. })
        ));
        assert_eq!(s, before);
        let mut s = Semaphore::decode(br#"{"semaphore":2,"max":1,"holders":null}"#).unwrap();
        s.set_max(0).unwrap();
        let err = s.set_max(i64::MAX).unwrap_err();
        assert!(err.to_string().contains("cannot be changed"), "{err}");
        assert_eq!((s.semaphore, s.max), (1, 0));
    }

    #[test]
    fn fresh_encodes_like_locksmith() {
        assert_eq!(
            Semaphore::fresh().encode(),
            r#"{"semaphore":1,"max":1,"holders":null}"#
        );
    }

    #[test]
    fn last_unlock_leaves_empty_list() {
        let mut s = Semaphore::fresh();
        s.lock("a").unwrap();
        assert_eq!(s.encode(), r#"{"semaphore":0,"max":1,"holders":["a"]}"#);
        s.unlock("a").unwrap();
        assert_eq!(s.encode(), r#"{"semaphore":1,"max":1,"holders":[]}"#);
    }

    #[test]
    fn holders_sorted_and_counted() {
        let mut s = Semaphore::fresh();
        s.set_max(3).unwrap();
        for id in ["c", "a", "b"] {
            assert_eq!(s.lock(id).unwrap(), LockOutcome::Taken);
        }
        assert_eq!(s.holders(), ["a", "b", "c"]);
        assert_eq!(s.lock("d"), Err(SemaphoreError::Full(0)));
        assert_eq!(s.lock("d").unwrap_err().to_string(), "semaphore is at 0");
    }

    #[test]
    fn relock_by_holder_is_idempotent_even_when_full() {
        let mut s = Semaphore::fresh();
        s.lock("a").unwrap();
        let before = s.clone();
        assert_eq!(s.lock("a").unwrap(), LockOutcome::AlreadyHeld);
        assert_eq!(s, before);
    }

    #[test]
    fn unlock_non_holder() {
        let mut s = Semaphore::fresh();
        assert_eq!(
            s.unlock("x").unwrap_err().to_string(),
            "holder does not exist"
        );
        s.lock("a").unwrap();
        assert_eq!(s.unlock("x"), Err(SemaphoreError::NotHolder));
    }

    #[test]
    fn set_max_below_holders_refused() {
        let mut s = Semaphore::fresh();
        s.set_max(3).unwrap();
        s.lock("a").unwrap();
        s.lock("b").unwrap();
        let err = s.set_max(1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot set max to 1: 2 machine(s) hold the lock; unlock some first"
        );
        assert_eq!(s.set_max(2).unwrap(), 3);
        assert_eq!(s.semaphore, 0);
        assert!(s.set_max(-1).is_err());
    }

    #[test]
    fn decodes_locksmith_null_and_unsorted() {
        let s = Semaphore::decode(br#"{"semaphore":1,"max":1,"holders":null}"#).unwrap();
        assert_eq!(s, Semaphore::fresh());
        let s = Semaphore::decode(br#"{"max":2,"semaphore":0,"holders":["b","a"]}"#).unwrap();
        assert_eq!(s.holders(), ["a", "b"]);
        assert!(Semaphore::decode(b"{").is_err());
        assert!(Semaphore::decode(br#"{"semaphore":"x"}"#).is_err());
    }

    #[test]
    fn go_escaping() {
        let s = Semaphore {
            semaphore: 0,
            max: 1,
            holders: Some(vec!["<a&\"b>\u{1}".into()]),
        };
        assert_eq!(
            s.encode(),
            r#"{"semaphore":0,"max":1,"holders":["\u003ca\u0026\"b\u003e\u0001"]}"#
        );
    }
}
