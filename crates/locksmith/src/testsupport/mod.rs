//! Real components for tests and benchmarks: etcd (`/usr/bin/etcd`, Debian etcd-server) in a
//! temporary data dir on free loopback ports, killed on drop, and restartable on the same ports
//! and data (an etcd outage); a stand-in update engine on D-Bus; and in
//! [`tls`] a throwaway CA and nginx terminating TLS.

pub mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the etcd binary is (override with `FASTPATCH_ETCD`).
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("FASTPATCH_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// A free loopback TCP port (bound, read, released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running single-member etcd.
pub struct EtcdServer {
    dir: tempfile::TempDir,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
    /// Server certificate and key: serve clients over TLS.
    tls: Option<(PathBuf, PathBuf)>,
    /// `--unsafe-no-fsync` (benchmarks only: shows what etcd's fsyncs cost).
    no_fsync: bool,
}

impl EtcdServer {
    /// Starts etcd and waits until it reports healthy. Fails with a clear message if the binary
    /// is missing (install Debian `etcd-server`).
    pub fn start() -> Result<Self, String> {
        Self::start_with(None)
    }

    /// Starts etcd serving clients over TLS with this certificate and key.
    pub fn start_tls(cert: PathBuf, key: PathBuf) -> Result<Self, String> {
        Self::start_with(Some((cert, key)))
    }

    /// Starts etcd with `--unsafe-no-fsync`: loses data on a crash; for measuring only.
    pub fn start_without_fsync() -> Result<Self, String> {
        Self::start_on_free_ports(None, true)
    }

    /// The data directory (on the filesystem whose fsync etcd waits for).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn unstarted(tls: Option<(PathBuf, PathBuf)>) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        Ok(EtcdServer {
            dir,
            client_port: free_port().map_err(|e| e.to_string())?,
            peer_port: free_port().map_err(|e| e.to_string())?,
            child: None,
            tls,
            no_fsync: false,
        })
    }

    fn start_with(tls: Option<(PathBuf, PathBuf)>) -> Result<Self, String> {
        Self::start_on_free_ports(tls, false)
    }

    /// A first start: a free port can be taken by another process between our probe and etcd's
    /// bind (parallel tests), so a start that fails with "address already in use" is tried again
    /// on new ports; any other failure is returned at once.
    fn start_on_free_ports(
        tls: Option<(PathBuf, PathBuf)>,
        no_fsync: bool,
    ) -> Result<Self, String> {
        let mut attempt = 0;
        loop {
            let mut s = Self::unstarted(tls.clone())?;
            s.no_fsync = no_fsync;
            match s.restart() {
                Ok(()) => return Ok(s),
                Err(e) if e.contains("address already in use") && attempt < 5 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The client URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (SIGKILL, like a crash) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts (again) on the same ports and data dir and waits for health.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let bin = etcd_binary();
        if !bin.exists() {
            return Err(format!(
                "{} not found: install Debian package etcd-server (or set FASTPATCH_ETCD)",
                bin.display()
            ));
        }
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log"))
            .map_err(|e| format!("etcd log: {e}"))?;
        let mut cmd = Command::new(&bin);
        if let Some((cert, key)) = &self.tls {
            cmd.arg(format!("--cert-file={}", cert.display()))
                .arg(format!("--key-file={}", key.display()));
        }
        let child = cmd
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-level=error")
            .args(self.no_fsync.then_some("--unsafe-no-fsync"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(20))
    }

    fn wait_healthy(&mut self, limit: Duration) -> Result<(), String> {
        use std::io::{Read, Write};
        let started = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    let log = std::fs::read_to_string(self.dir.path().join("etcd.log"))
                        .unwrap_or_default();
                    return Err(format!("etcd exited with {status}: {log}"));
                }
            }
            if self.tls.is_some() {
                // Over TLS: accepting connections is enough; the client's first call retries.
                if std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_ok() {
                    std::thread::sleep(Duration::from_millis(300));
                    return Ok(());
                }
            } else if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.client_port))
            {
                // A bare HTTP/1.0 GET /health keeps this free of an async runtime.
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
                let mut body = String::new();
                let _ = s.read_to_string(&mut body);
                if body.contains("\"health\":\"true\"") {
                    return Ok(());
                }
            }
            if started.elapsed() > limit {
                return Err("etcd did not become healthy in time".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A stand-in update engine on a bus: answers `GetStatus` and emits `StatusUpdate` like
/// update_engine's `com.coreos.update1` (for tests of locksmithd against a real dbus-daemon).
pub struct FakeEngine {
    pub status: SharedStatus,
}

use std::sync::Arc;

/// The fake engine's status: (last_checked_time, progress, operation, version, size).
pub type SharedStatus = Arc<std::sync::Mutex<fastpatch_update1::RawStatus>>;

#[zbus::interface(name = "com.coreos.update1.Manager")]
impl FakeEngine {
    fn get_status(&self) -> fastpatch_update1::RawStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    #[zbus(signal)]
    async fn status_update(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        last_checked_time: i64,
        progress: f64,
        current_operation: &str,
        new_version: &str,
        new_size: i64,
    ) -> zbus::Result<()>;
}

impl FakeEngine {
    /// Registers the engine as `com.coreos.update1` on the bus at `address`.
    pub async fn serve(address: &str, op: &str) -> zbus::Result<(zbus::Connection, SharedStatus)> {
        let status = Arc::new(std::sync::Mutex::new((
            0,
            0.0,
            op.to_string(),
            String::new(),
            0,
        )));
        let conn = zbus::connection::Builder::address(address)
            .name(crate::dbus::ENGINE_NAME)
            .serve_at(
                crate::dbus::ENGINE_PATH,
                FakeEngine {
                    status: status.clone(),
                },
            )
            .build()
            .await?;
        Ok((conn, status))
    }

    /// Sets the status and emits `StatusUpdate`.
    pub async fn set(conn: &zbus::Connection, status: &SharedStatus, op: &str) -> zbus::Result<()> {
        if let Ok(mut s) = status.lock() {
            s.2 = op.to_string();
        }
        let emitter = zbus::object_server::SignalEmitter::new(conn, crate::dbus::ENGINE_PATH)?;
        FakeEngine::status_update(&emitter, 0, 1.0, op, "9999.0.0", 1).await
    }
}
