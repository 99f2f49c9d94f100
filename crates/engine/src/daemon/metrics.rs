//! The engine's Prometheus metrics, served on a local Unix socket by
//! `fastpatch-metrics-socket` (`curl --unix-socket PATH http://localhost/metrics`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::status::UpdateStatus;

/// The daemon's counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    status: Mutex<Option<UpdateStatus>>,
    last_check: AtomicI64,
    bytes_downloaded: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn set_status(&self, s: UpdateStatus) {
        if let Ok(mut g) = self.status.lock() {
            *g = Some(s);
        }
    }
    pub fn set_last_check(&self, unix: i64) {
        self.last_check.store(unix, Ordering::Relaxed);
    }
    pub fn add_bytes(&self, n: u64) {
        self.bytes_downloaded.fetch_add(n, Ordering::Relaxed);
    }
    /// Kinds: `check_server`, `check`, `install`, `health`.
    pub fn failure(&self, kind: &'static str) {
        if let Ok(mut g) = self.failures.lock() {
            *g.entry(kind).or_default() += 1;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let status = self.status.lock().ok().and_then(|g| *g);
        let mut out = String::from(
            "# HELP fastpatch_engine_status 1 for the engine's current update_engine status.\n# TYPE fastpatch_engine_status gauge\n",
        );
        for s in UpdateStatus::ALL {
            out += &format!(
                "fastpatch_engine_status{{status=\"{}\"}} {}\n",
                s.as_str(),
                u8::from(status == Some(s))
            );
        }
        out += &format!(
            "# HELP fastpatch_engine_last_check_timestamp_seconds Unix time of the last answered update check (0: never).\n# TYPE fastpatch_engine_last_check_timestamp_seconds gauge\nfastpatch_engine_last_check_timestamp_seconds {}\n",
            self.last_check.load(Ordering::Relaxed)
        );
        out += &format!(
            "# HELP fastpatch_engine_downloaded_bytes_total Payload bytes received.\n# TYPE fastpatch_engine_downloaded_bytes_total counter\nfastpatch_engine_downloaded_bytes_total {}\n",
            self.bytes_downloaded.load(Ordering::Relaxed)
        );
        out += "# HELP fastpatch_engine_failures_total Failures by kind.\n# TYPE fastpatch_engine_failures_total counter\n";
        let failures = self.failures.lock().map(|g| g.clone()).unwrap_or_default();
        for kind in ["check_server", "check", "install", "health"] {
            out += &format!(
                "fastpatch_engine_failures_total{{kind=\"{kind}\"}} {}\n",
                failures.get(kind).copied().unwrap_or(0)
            );
        }
        out
    }
}

/// Serves the metrics on the socket at `path` until the task is dropped.
pub fn serve(path: &Path, metrics: Arc<Metrics>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    fastpatch_metrics_socket::serve(path, Arc::new(move || metrics.render()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_text_and_http() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let m = Arc::new(Metrics::default());
        m.set_status(UpdateStatus::Downloading);
        m.add_bytes(1234);
        m.failure("check_server");
        let _task = serve(&path, m.clone()).unwrap();
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("fastpatch_engine_status{status=\"UPDATE_STATUS_DOWNLOADING\"} 1"));
        assert!(text.contains("fastpatch_engine_status{status=\"UPDATE_STATUS_IDLE\"} 0"));
        assert!(text.contains("fastpatch_engine_downloaded_bytes_total 1234"));
        assert!(text.contains("fastpatch_engine_failures_total{kind=\"check_server\"} 1"));
        assert!(text.contains("fastpatch_engine_failures_total{kind=\"install\"} 0"));
    }
}
