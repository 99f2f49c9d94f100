//! Rebooting and telling logged-in users first.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Local};

use crate::config::RebootMethod;

/// Reboots by `method`. A kexec reboot loads the next boot's kernel, then starts systemd's
/// kexec.target on the bus; when either step fails the firmware reboot follows, since a
/// reboot was due.
pub async fn reboot_by(
    method: &RebootMethod,
    command: Option<&str>,
    dbus_address: Option<&str>,
) -> Result<(), String> {
    if let RebootMethod::Kexec { load_command } = method {
        match kexec(load_command, dbus_address).await {
            Ok(()) => return Ok(()),
            Err(e) => tracing::warn!(
                error = %e,
                "kexec reboot not possible; rebooting through the firmware instead"
            ),
        }
    }
    reboot(command, dbus_address).await
}

async fn kexec(load_command: &str, dbus_address: Option<&str>) -> Result<(), String> {
    run_shell(load_command).await?;
    let conn = crate::dbus::connect(dbus_address)
        .await
        .map_err(|e| format!("D-Bus: {e}"))?;
    crate::dbus::systemd_kexec(&conn)
        .await
        .map_err(|e| format!("starting kexec.target: {e}"))
}

async fn run_shell(cmd: &str) -> Result<(), String> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .await
        .map_err(|e| format!("running {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} exited with {status}"))
    }
}

/// Reboots through `command` (run by `sh -c`) or logind's `Reboot(false)` on the bus.
pub async fn reboot(command: Option<&str>, dbus_address: Option<&str>) -> Result<(), String> {
    match command {
        Some(cmd) => run_shell(cmd).await,
        None => {
            let conn = crate::dbus::connect(dbus_address)
                .await
                .map_err(|e| format!("D-Bus: {e}"))?;
            crate::dbus::logind_reboot(&conn)
                .await
                .map_err(|e| format!("logind Reboot: {e}"))
        }
    }
}

/// locksmith's broadcast text.
pub fn broadcast_message(now: DateTime<Local>, delay: chrono::Duration) -> String {
    let when = if delay.num_seconds() % 60 == 0 {
        let m = delay.num_minutes();
        format!("{m} minute{}", if m == 1 { "" } else { "s" })
    } else {
        let n = delay.num_seconds();
        format!("{n} second{}", if n == 1 { "" } else { "s" })
    };
    format!(
        "\r\nBroadcast message from locksmithd at {}:\r\nSystem reboot in {when}!\r\n\r\n",
        now.format("%a %b %e %H:%M:%S %Y")
    )
}

const UTMP_RECORD: usize = 384;
const USER_PROCESS: i16 = 7;

/// Terminals of logged-in users, from a utmp file (`<root>/run/utmp`): `<root>/dev/<line>`.
pub fn logged_in_terminals(root: &Path) -> Vec<PathBuf> {
    let Ok(data) = std::fs::read(root.join("run/utmp")) else {
        return vec![];
    };
    let mut ttys: Vec<PathBuf> = data
        .chunks_exact(UTMP_RECORD)
        .filter(|r| i16::from_ne_bytes([r[0], r[1]]) == USER_PROCESS)
        .filter_map(|r| {
            let line = &r[8..40];
            let end = line.iter().position(|&b| b == 0).unwrap_or(line.len());
            let name = std::str::from_utf8(&line[..end]).ok()?;
            // Only plain device names under /dev (no path tricks from a corrupt file).
            if name.is_empty() || name.contains("..") || name.starts_with('/') {
                return None;
            }
            Some(root.join("dev").join(name))
        })
        .collect();
    ttys.sort();
    ttys.dedup();
    ttys
}

/// Writes `msg` to every logged-in terminal; returns how many were told.
pub fn broadcast(root: &Path, msg: &str) -> usize {
    use std::io::Write;
    let mut told = 0;
    for tty in logged_in_terminals(root) {
        let ok = std::fs::OpenOptions::new()
            .append(true)
            .open(&tty)
            .and_then(|mut f| f.write_all(msg.as_bytes()));
        match ok {
            Ok(()) => told += 1,
            Err(e) => tracing::warn!(tty = %tty.display(), error = %e, "cannot write broadcast"),
        }
    }
    told
}

/// Builds one utmp record (for tests and tools).
pub fn utmp_record(kind: i16, line: &str, user: &str) -> Vec<u8> {
    let mut r = vec![0u8; UTMP_RECORD];
    r[0..2].copy_from_slice(&kind.to_ne_bytes());
    let l = line.as_bytes();
    r[8..8 + l.len().min(32)].copy_from_slice(&l[..l.len().min(32)]);
    let u = user.as_bytes();
    r[44..44 + u.len().min(32)].copy_from_slice(&u[..u.len().min(32)]);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn message_text() {
        let t = Local.with_ymd_and_hms(2026, 1, 2, 15, 4, 5).unwrap();
        assert_eq!(
            broadcast_message(t, chrono::Duration::minutes(5)),
            "\r\nBroadcast message from locksmithd at Fri Jan  2 15:04:05 2026:\r\nSystem reboot in 5 minutes!\r\n\r\n"
        );
        assert!(broadcast_message(t, chrono::Duration::seconds(90)).contains("in 90 seconds!"));
    }

    #[test]
    fn utmp_terminals_and_broadcast() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("run")).unwrap();
        std::fs::create_dir_all(root.path().join("dev/pts")).unwrap();
        let mut utmp = utmp_record(USER_PROCESS, "pts/0", "core");
        utmp.extend(utmp_record(8, "pts/1", "gone")); // DEAD_PROCESS
        utmp.extend(utmp_record(USER_PROCESS, "tty1", "root"));
        utmp.extend(utmp_record(USER_PROCESS, "../etc/passwd", "evil"));
        std::fs::write(root.path().join("run/utmp"), utmp).unwrap();
        std::fs::write(root.path().join("dev/pts/0"), "").unwrap();
        // tty1 does not exist as a file in the test root: counted as not told.
        let ttys = logged_in_terminals(root.path());
        assert_eq!(
            ttys,
            vec![root.path().join("dev/pts/0"), root.path().join("dev/tty1")]
        );
        assert_eq!(broadcast(root.path(), "hello"), 1);
        assert_eq!(
            std::fs::read_to_string(root.path().join("dev/pts/0")).unwrap(),
            "hello"
        );
        assert_eq!(broadcast(tempfile::tempdir().unwrap().path(), "x"), 0);
    }
}
