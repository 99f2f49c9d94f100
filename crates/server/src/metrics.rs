//! Prometheus text exposition: counters kept in atomics, fleet gauges read at scrape time.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::{Result, Store};

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub bad_requests: AtomicU64,
    pub internal_errors: AtomicU64,
    pub unknown_app: AtomicU64,
    pub unknown_group: AtomicU64,
    pub update_checks: AtomicU64,
    pub offers: AtomicU64,
    pub delta_offers: AtomicU64,
    pub no_readable_payload: AtomicU64,
    pub grants: AtomicU64,
    pub holds: AtomicU64,
    pub no_update: AtomicU64,
    pub events: AtomicU64,
    pub update_failures: AtomicU64,
    pub halts: AtomicU64,
    pub payload_requests: AtomicU64,
}

impl Metrics {
    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub async fn render(&self, store: &Store) -> Result<String> {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        };
        counter(
            &mut out,
            "fastpatch_omaha_requests_total",
            "Omaha requests received.",
            &self.requests,
        );
        counter(
            &mut out,
            "fastpatch_update_checks_total",
            "Update checks answered.",
            &self.update_checks,
        );
        counter(
            &mut out,
            "fastpatch_update_offers_total",
            "Update checks answered with an update.",
            &self.offers,
        );
        counter(
            &mut out,
            "fastpatch_update_delta_offers_total",
            "Update offers that were delta payloads (part of the offers).",
            &self.delta_offers,
        );
        counter(
            &mut out,
            "fastpatch_update_no_readable_payload_total",
            "Update checks answered error-noPackageFound: no payload of the version uses only operations the client applies.",
            &self.no_readable_payload,
        );
        counter(
            &mut out,
            "fastpatch_update_grants_total",
            "New update grants (count against policy limits).",
            &self.grants,
        );
        counter(
            &mut out,
            "fastpatch_update_holds_total",
            "Update checks held back by a policy.",
            &self.holds,
        );
        counter(
            &mut out,
            "fastpatch_update_noupdate_total",
            "Update checks with nothing to offer.",
            &self.no_update,
        );
        counter(
            &mut out,
            "fastpatch_events_total",
            "Omaha events received.",
            &self.events,
        );
        counter(
            &mut out,
            "fastpatch_update_failures_total",
            "Error events (including rollbacks).",
            &self.update_failures,
        );
        counter(
            &mut out,
            "fastpatch_group_halts_total",
            "Groups halted by safe mode.",
            &self.halts,
        );
        counter(
            &mut out,
            "fastpatch_payload_requests_total",
            "Payload downloads served.",
            &self.payload_requests,
        );
        let _ = writeln!(out, "# HELP fastpatch_errors_total Requests that failed, by kind.\n# TYPE fastpatch_errors_total counter");
        for (kind, v) in [
            ("bad_request", &self.bad_requests),
            ("internal", &self.internal_errors),
            ("unknown_app", &self.unknown_app),
            ("unknown_group", &self.unknown_group),
        ] {
            let _ = writeln!(
                out,
                "fastpatch_errors_total{{kind=\"{kind}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP fastpatch_instances Instances by app, group, channel and version.\n# TYPE fastpatch_instances gauge");
        let mut halted_lines =
            String::from("# HELP fastpatch_group_halted 1 if the group's rollout is halted.\n# TYPE fastpatch_group_halted gauge\n");
        for app in store.apps().await? {
            for g in store.groups(&app.id).await? {
                for (version, n) in store.version_counts(&app.id, &g.name).await? {
                    let _ = writeln!(
                        out,
                        "fastpatch_instances{{app=\"{}\",group=\"{}\",channel=\"{}\",version=\"{}\"}} {n}",
                        esc(&app.id), esc(&g.name), esc(&g.channel), esc(&version)
                    );
                }
                let _ = writeln!(
                    halted_lines,
                    "fastpatch_group_halted{{app=\"{}\",group=\"{}\"}} {}",
                    esc(&app.id),
                    esc(&g.name),
                    u8::from(g.halted)
                );
            }
        }
        out.push_str(&halted_lines);
        let _ = writeln!(
            out,
            "# HELP fastpatch_recent_instances Instance rows kept in memory for re-checks.\n# TYPE fastpatch_recent_instances gauge\nfastpatch_recent_instances {}",
            store.recent_instances()
        );
        Ok(out)
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
