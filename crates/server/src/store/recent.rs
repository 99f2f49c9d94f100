//! Recent check-ins kept in memory, so a machine re-checking with nothing new
//! costs no database round trip, and `last_check_at` is written in batches.
//!
//! Only instance rows live here, never counts: grants and limits are always
//! decided in a database transaction (see `grants.rs`). An entry is trusted
//! for [`INSTANCE_TTL_SECS`] after it was read from (or written to) the
//! database; every write this process makes to an instance updates or drops
//! its entry, so only writes by *another* process can be missed, and only for
//! that long. Pending `last_check_at` values are flushed by the server's
//! background job every flush interval and on graceful shutdown; a crash loses
//! at most one interval of last-seen timestamps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::instances::InstanceRow;

/// How long a cached instance row is used without re-reading the database.
pub const INSTANCE_TTL_SECS: i64 = 60;

/// Above this many cached rows, expired ones are dropped at once.
const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, Clone)]
struct Entry {
    /// Shared with the requests that read it; a write copies it only while one holds it.
    row: Arc<InstanceRow>,
    /// Clock value (unix seconds) when the row was last read from or written to the database.
    synced_at: i64,
}

/// app id → machine id → entry; two levels so a lookup by `&str` allocates nothing.
type Rows = HashMap<String, HashMap<String, Entry>>;

/// app id → machine id → newest unflushed `last_check_at`.
type Pending = HashMap<String, HashMap<String, i64>>;

#[derive(Debug, Default)]
pub struct RecentCheckIns {
    rows: Mutex<Rows>,
    pending: Mutex<Pending>,
}

/// What a check-in carries that the row also holds: equal means nothing to write now.
pub struct Identity<'a> {
    pub alias: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub version: &'a str,
    pub arch: &'a str,
    pub group: &'a str,
}

impl Identity<'_> {
    pub fn matches(&self, row: &InstanceRow) -> bool {
        row.alias.as_deref() == self.alias
            && row.ip.as_deref() == self.ip
            && row.version == self.version
            && row.arch == self.arch
            && row.group_name == self.group
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RecentCheckIns {
    /// A fresh cached row equal to `id`: records `now` as the pending last
    /// check and returns the row (with `last_check_at = now`). None: go to the database.
    pub fn touch(
        &self,
        app: &str,
        machine: &str,
        id: &Identity<'_>,
        now: i64,
    ) -> Option<Arc<InstanceRow>> {
        let row = {
            let mut rows = lock(&self.rows);
            let e = rows.get_mut(app)?.get_mut(machine)?;
            let age = now - e.synced_at;
            if !(0..INSTANCE_TTL_SECS).contains(&age) || !id.matches(&e.row) {
                return None;
            }
            if e.row.last_check_at < now {
                Arc::make_mut(&mut e.row).last_check_at = now;
            }
            Arc::clone(&e.row)
        };
        self.mark_seen(app, machine, now);
        Some(row)
    }

    /// Remembers a row just read from or written to the database.
    pub fn store(&self, row: Arc<InstanceRow>, now: i64) {
        let mut rows = lock(&self.rows);
        if rows.values().map(HashMap::len).sum::<usize>() >= MAX_ENTRIES {
            evict_expired(&mut rows, now);
            if rows.values().map(HashMap::len).sum::<usize>() >= MAX_ENTRIES {
                rows.clear();
            }
        }
        rows.entry(row.app_id.clone()).or_default().insert(
            row.machine_id.clone(),
            Entry {
                row,
                synced_at: now,
            },
        );
    }

    /// Records `now` as the machine's last check, to be written by the next flush.
    pub fn mark_seen(&self, app: &str, machine: &str, now: i64) {
        let mut pending = lock(&self.pending);
        let slot = match pending.get_mut(app) {
            Some(m) => m,
            None => pending.entry(app.to_owned()).or_default(),
        };
        match slot.get_mut(machine) {
            Some(t) => *t = (*t).max(now),
            None => {
                slot.insert(machine.to_owned(), now);
            }
        }
    }

    /// Applies a status change this process wrote, if the row is cached.
    pub fn update(&self, app: &str, machine: &str, f: impl FnOnce(&mut InstanceRow)) {
        if let Some(e) = lock(&self.rows)
            .get_mut(app)
            .and_then(|m| m.get_mut(machine))
        {
            f(Arc::make_mut(&mut e.row));
        }
    }

    /// Drops one row (its next check-in reads the database).
    pub fn forget(&self, app: &str, machine: &str) {
        if let Some(m) = lock(&self.rows).get_mut(app) {
            m.remove(machine);
        }
    }

    /// Drops every cached row (pending timestamps stay: they are still true).
    pub fn clear(&self) {
        lock(&self.rows).clear();
    }

    /// The unflushed last check of a machine, if newer than what the database holds.
    pub fn pending_last_check(&self, app: &str, machine: &str) -> Option<i64> {
        lock(&self.pending).get(app)?.get(machine).copied()
    }

    /// Takes every pending timestamp, as (app, machine, last_check_at); drops expired rows.
    pub fn take_pending(&self, now: i64) -> Vec<(String, String, i64)> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        evict_expired(&mut lock(&self.rows), now);
        pending
            .into_iter()
            .flat_map(|(app, m)| {
                m.into_iter()
                    .map(move |(machine, at)| (app.clone(), machine, at))
            })
            .collect()
    }

    /// Puts back timestamps a failed flush could not write (newer values win).
    pub fn restore_pending(&self, items: Vec<(String, String, i64)>) {
        for (app, machine, at) in items {
            self.mark_seen(&app, &machine, at);
        }
    }

    pub fn cached_rows(&self) -> usize {
        lock(&self.rows).values().map(HashMap::len).sum()
    }
}

fn evict_expired(rows: &mut Rows, now: i64) {
    for m in rows.values_mut() {
        m.retain(|_, e| (0..INSTANCE_TTL_SECS).contains(&(now - e.synced_at)));
    }
    rows.retain(|_, m| !m.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(machine: &str, version: &str) -> InstanceRow {
        InstanceRow {
            app_id: "app".into(),
            machine_id: machine.into(),
            alias: None,
            ip: Some("10.0.0.1".into()),
            version: version.into(),
            arch: "amd64".into(),
            group_name: "stable".into(),
            status: crate::policy::InstanceStatus::Undefined,
            target_version: None,
            granted_at: None,
            status_at: 100,
            last_check_at: 100,
            created_at: 100,
            last_error_code: None,
        }
    }

    fn id(version: &str) -> Identity<'_> {
        Identity {
            alias: None,
            ip: Some("10.0.0.1"),
            version,
            arch: "amd64",
            group: "stable",
        }
    }

    #[test]
    fn fresh_equal_rows_are_served_and_marked_seen() {
        let r = RecentCheckIns::default();
        assert!(
            r.touch("app", "m", &id("1.0.0"), 100).is_none(),
            "empty cache"
        );
        r.store(Arc::new(row("m", "1.0.0")), 100);
        let got = r.touch("app", "m", &id("1.0.0"), 130).expect("cached");
        assert_eq!(got.last_check_at, 130);
        assert_eq!(r.pending_last_check("app", "m"), Some(130));
        // A changed version, an expired entry or a clock that went back: the database decides.
        assert!(r.touch("app", "m", &id("1.1.0"), 131).is_none());
        assert!(r
            .touch("app", "m", &id("1.0.0"), 100 + INSTANCE_TTL_SECS)
            .is_none());
        assert!(r.touch("app", "m", &id("1.0.0"), 99).is_none());
    }

    #[test]
    fn a_row_a_request_holds_is_copied_on_write_not_changed_under_it() {
        let r = RecentCheckIns::default();
        r.store(Arc::new(row("m", "1.0.0")), 100);
        let held = r.touch("app", "m", &id("1.0.0"), 110).expect("cached");
        r.update("app", "m", |row| {
            row.status = crate::policy::InstanceStatus::OnHold
        });
        let later = r.touch("app", "m", &id("1.0.0"), 120).expect("cached");
        assert_eq!(held.status, crate::policy::InstanceStatus::Undefined);
        assert_eq!(held.last_check_at, 110);
        assert_eq!(later.status, crate::policy::InstanceStatus::OnHold);
        assert_eq!(later.last_check_at, 120);
    }

    #[test]
    fn pending_keeps_the_newest_and_survives_a_failed_flush() {
        let r = RecentCheckIns::default();
        r.mark_seen("app", "m", 200);
        r.mark_seen("app", "m", 150);
        let taken = r.take_pending(200);
        assert_eq!(taken, vec![("app".into(), "m".into(), 200)]);
        assert!(r.take_pending(200).is_empty());
        r.mark_seen("app", "m", 210);
        r.restore_pending(taken);
        assert_eq!(r.pending_last_check("app", "m"), Some(210));
    }

    #[test]
    fn updates_and_expiry() {
        let r = RecentCheckIns::default();
        r.store(Arc::new(row("m", "1.0.0")), 100);
        r.update("app", "m", |row| {
            row.status = crate::policy::InstanceStatus::OnHold
        });
        assert_eq!(
            r.touch("app", "m", &id("1.0.0"), 101).unwrap().status,
            crate::policy::InstanceStatus::OnHold
        );
        r.forget("app", "m");
        assert!(r.touch("app", "m", &id("1.0.0"), 102).is_none());
        r.store(Arc::new(row("m", "1.0.0")), 100);
        r.take_pending(100 + INSTANCE_TTL_SECS);
        assert_eq!(r.cached_rows(), 0, "expired rows are dropped at flush time");
    }
}
