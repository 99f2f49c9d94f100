//! nginx (Debian package nginx) terminating TLS in front of a plain-HTTP service — how a
//! FleetLock server is commonly exposed. The certificates come from
//! `fastpatch_testsupport::TestCa`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// nginx serving `https://127.0.0.1:port` and proxying to a plain-HTTP backend; stopped on drop.
pub struct NginxTlsProxy {
    child: Child,
    pub port: u16,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl NginxTlsProxy {
    pub fn start(cert: &Path, key: &Path, backend: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let port = free_port().map_err(|e| e.to_string())?;
        let d = dir.path().display();
        // Run as whoever we are (root in CI would otherwise switch workers to `nobody`).
        let user = if nix_is_root() { "user root;" } else { "" };
        let conf = format!(
            "{user}\nworker_processes 1;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n\
                 ssl_certificate_key {key};\n    location / {{ proxy_pass {backend}; }}\n  }}\n}}\n",
            cert = cert.display(),
            key = key.display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| format!("writing nginx.conf: {e}"))?;
        let child = Command::new(nginx_binary())
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting nginx (install Debian package nginx): {e}"))?;
        let mut proxy = NginxTlsProxy {
            child,
            port,
            conf: conf_path,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                let log = std::fs::read_to_string(proxy._dir.path().join("error.log"))
                    .unwrap_or_default();
                return Err(format!("nginx exited ({status}): {log}"));
            }
            if Instant::now() > deadline {
                return Err("nginx did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(proxy)
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The master's child processes (its worker), from `/proc`.
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.child.id())
    }
}

/// Processes whose parent is `pid` (field 4 of `/proc/N/stat`, after the parenthesised name).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|n| {
            std::fs::read_to_string(format!("/proc/{n}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nginx"))
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

impl Drop for NginxTlsProxy {
    /// `nginx -s stop` (SIGTERM to the master through its pid file): the master stops its
    /// worker before it exits. A SIGKILL to the master alone leaves the worker running,
    /// adopted by init; that is only the fallback.
    fn drop(&mut self) {
        let stopped = Command::new(nginx_binary())
            .arg("-c")
            .arg(&self.conf)
            .arg("-p")
            .arg(self._dir.path())
            .args(["-s", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + Duration::from_secs(5);
        while stopped && Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
