//! A throwaway CA and a server certificate for 127.0.0.1, made by the `openssl` command
//! (Debian package openssl), for tests of TLS endpoints (etcd, FleetLock, fastpatch-server).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and a server certificate for `127.0.0.1` in a directory.
pub struct TestCa {
    pub ca_pem: PathBuf,
    pub server_pem: PathBuf,
    pub server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .map_err(|e| format!("running openssl (install Debian package openssl): {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(())
}

impl TestCa {
    /// Makes `ca.pem`, `server.pem` and `server.key` (valid one day) in `dir`.
    pub fn create(dir: &Path) -> Result<Self, String> {
        let key_args = ["-newkey", "rsa:2048", "-nodes"];
        let mut ca = vec!["req", "-x509"];
        ca.extend(key_args);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        ca.extend(["-subj", "/CN=fastpatch-test-ca", "-days", "1"]);
        openssl(dir, &ca)?;
        let mut csr = vec!["req"];
        csr.extend(key_args);
        csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
        csr.extend(["-subj", "/CN=127.0.0.1"]);
        openssl(dir, &csr)?;
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n")
            .map_err(|e| format!("writing ext.cnf: {e}"))?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
            ],
        )?;
        Ok(TestCa {
            ca_pem: dir.join("ca.pem"),
            server_pem: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        })
    }
}
