//! A private dbus-daemon per test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A private session-type bus, killed on drop.
pub struct PrivateBus {
    child: Child,
    /// The `unix:path=…` address to connect to.
    pub address: String,
}

impl PrivateBus {
    /// Starts `dbus-daemon --session` and reads its address.
    ///
    /// # Panics
    /// When dbus-daemon is missing or prints no address (a test setup failure).
    pub fn start() -> PrivateBus {
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon must be installed (Debian package dbus)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read bus address");
        assert!(
            line.starts_with("unix:"),
            "unexpected dbus-daemon address {line:?}"
        );
        PrivateBus {
            child,
            address: line.trim().to_string(),
        }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
