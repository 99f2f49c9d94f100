//! Token buckets for disk-write and network bytes per second, plus an optional cgroup v2
//! `io.max` limit. The bucket's decision is pure (`reserve` returns how long to wait), so it
//! works from a blocking writer thread (`throttle`) and from an async download loop (sleep
//! for the returned duration with the runtime's timer).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A token bucket: `rate` bytes per second, bursts of up to `burst` bytes.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` bytes/s; a burst of a quarter second (at least 64 KiB).
    pub fn new(rate: u64) -> TokenBucket {
        let burst = (rate as f64 / 4.0).max(64.0 * 1024.0);
        TokenBucket::with_burst(rate, burst as u64)
    }

    pub fn with_burst(rate: u64, burst: u64) -> TokenBucket {
        TokenBucket {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Takes `n` bytes' worth of tokens as of `now` and returns how long the caller must wait
    /// before using them (zero when the bucket had enough). Tokens may go negative: a large
    /// request is paid back by waiting, not refused.
    pub fn reserve_at(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    pub fn reserve(&mut self, n: u64) -> Duration {
        self.reserve_at(n, Instant::now())
    }

    /// Blocks the calling thread until `n` bytes may pass.
    pub fn throttle(&mut self, n: u64) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// Network-side helper for the engine's download loop: `let wait = limit.reserve(chunk.len());
/// tokio::time::sleep(wait).await;` before feeding the chunk on.
pub type NetworkLimiter = TokenBucket;

/// Puts a process under a cgroup v2 `io.max` write limit on one block device.
///
/// Creates `<cgroup_root>/<name>` (cgroup v2 only), writes `MAJ:MIN wbps=<bytes>` to its
/// `io.max` and moves `pid` into it. Needs the `io` controller enabled in the parent's
/// `cgroup.subtree_control`, which the caller (systemd unit or the engine) arranges.
#[derive(Debug, Clone)]
pub struct IoMax {
    pub cgroup: PathBuf,
}

impl IoMax {
    pub fn apply(
        cgroup_root: &Path,
        name: &str,
        device: (u32, u32),
        wbps: u64,
        pid: u32,
    ) -> io::Result<IoMax> {
        if !cgroup_root.join("cgroup.controllers").exists() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{} is not a cgroup v2 hierarchy", cgroup_root.display()),
            ));
        }
        let controllers = fs::read_to_string(cgroup_root.join("cgroup.subtree_control"))?;
        if !controllers.split_whitespace().any(|c| c == "io") {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the io controller is not enabled for child cgroups",
            ));
        }
        let cgroup = cgroup_root.join(name);
        match fs::create_dir(&cgroup) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        fs::write(cgroup.join("io.max"), io_max_line(device, wbps))?;
        fs::write(cgroup.join("cgroup.procs"), pid.to_string())?;
        Ok(IoMax { cgroup })
    }
}

/// The `io.max` line limiting writes on a device.
pub fn io_max_line(device: (u32, u32), wbps: u64) -> String {
    format!("{}:{} wbps={}\n", device.0, device.1, wbps)
}

/// The (major, minor) of the block device holding `path` (or of `path` itself if it is one).
pub fn device_numbers(path: &Path) -> io::Result<(u32, u32)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = fs::metadata(path)?;
    let dev = if meta.file_type().is_block_device() {
        meta.rdev()
    } else {
        meta.dev()
    };
    Ok((libc::major(dev), libc::minor(dev)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_pays_back_by_waiting() {
        let t0 = Instant::now();
        let mut b = TokenBucket::with_burst(1000, 1000);
        b.last = t0;
        assert_eq!(b.reserve_at(1000, t0), Duration::ZERO);
        assert_eq!(b.reserve_at(500, t0), Duration::from_millis(500));
        // After 1.5 s the debt of 500 is paid and 1000 tokens are back (capped at burst).
        assert_eq!(
            b.reserve_at(1000, t0 + Duration::from_millis(2000)),
            Duration::ZERO
        );
        assert_eq!(
            b.reserve_at(2000, t0 + Duration::from_millis(2000)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn io_max_format() {
        assert_eq!(io_max_line((8, 16), 1 << 20), "8:16 wbps=1048576\n");
    }
}
