//! `update_engine_client`: the same flags and output as Flatcar's, over D-Bus. Unlike
//! Flatcar's (#1461), `-update` exits non-zero when the update fails.

use std::io::Write;

use futures_util::StreamExt;

use crate::dbus::{self, ManagerClientProxy};
use crate::status::UpdateStatus;
use crate::status_report::StatusSnapshot;

/// What the command line asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCommand {
    Status,
    CheckForUpdate,
    Update,
    ResetStatus,
    WatchForUpdates,
}

pub const USAGE: &str = "usage: update_engine_client [-status] [-check_for_update] [-update] [-reset_status] [-watch_for_updates]
  -status             print the engine's status (LAST_CHECKED_TIME=, PROGRESS=, CURRENT_OP=, NEW_VERSION=, NEW_SIZE=)
  -check_for_update   ask the engine to check for an update now, and return
  -update             check for an update and follow it until it is staged; exit 1 if it fails
  -reset_status       return to idle (unstages an update that waits for its reboot)
  -watch_for_updates  print every status change until interrupted
The bus is the system bus, or DBUS_SYSTEM_BUS_ADDRESS when set.";

/// Parses Go/gflags-style flags (`-status`, also `--status`). Several may be given; they run
/// in the order update_engine_client runs them.
pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Vec<ClientCommand>, String> {
    let mut cmds = Vec::new();
    for a in args {
        let flag = a.as_ref().trim_start_matches('-');
        let cmd = match flag {
            "status" => ClientCommand::Status,
            "check_for_update" => ClientCommand::CheckForUpdate,
            "update" => ClientCommand::Update,
            "reset_status" => ClientCommand::ResetStatus,
            "watch_for_updates" => ClientCommand::WatchForUpdates,
            "help" | "h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown flag -{other}\n{USAGE}")),
        };
        if !cmds.contains(&cmd) {
            cmds.push(cmd);
        }
    }
    if cmds.is_empty() {
        return Err(USAGE.to_string());
    }
    let order = [
        ClientCommand::ResetStatus,
        ClientCommand::Status,
        ClientCommand::CheckForUpdate,
        ClientCommand::Update,
        ClientCommand::WatchForUpdates,
    ];
    cmds.sort_by_key(|c| order.iter().position(|o| o == c));
    Ok(cmds)
}

/// How a followed update ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    Staged,
    NoUpdate,
    Failed(String),
}

/// Follows the statuses after AttemptUpdate and says when the attempt is over. Pure.
#[derive(Debug, Default)]
pub struct UpdateFollower {
    seen_busy: bool,
    seen_offer: bool,
}

impl UpdateFollower {
    pub fn observe(&mut self, status: UpdateStatus) -> Option<UpdateOutcome> {
        use UpdateStatus as S;
        match status {
            S::UpdatedNeedReboot => Some(UpdateOutcome::Staged),
            S::ReportingErrorEvent => Some(UpdateOutcome::Failed(
                "the engine reported an error event".into(),
            )),
            S::Idle if self.seen_offer => Some(UpdateOutcome::Failed(
                "the update stopped before it was staged".into(),
            )),
            S::Idle if self.seen_busy => Some(UpdateOutcome::NoUpdate),
            S::Idle => None,
            S::CheckingForUpdate => {
                self.seen_busy = true;
                None
            }
            _ => {
                self.seen_busy = true;
                self.seen_offer = true;
                None
            }
        }
    }
}

fn snapshot(t: crate::dbus::RawStatus) -> StatusSnapshot {
    StatusSnapshot {
        last_checked_time: t.0,
        progress: t.1,
        current_operation: t.2.parse().unwrap_or(UpdateStatus::Idle),
        new_version: t.3,
        new_size: t.4,
    }
}

fn signal_snapshot(signal: &crate::dbus::StatusUpdate) -> zbus::Result<StatusSnapshot> {
    let a = signal.args()?;
    Ok(snapshot((
        a.last_checked_time,
        a.progress,
        a.current_operation.clone(),
        a.new_version.clone(),
        a.new_size,
    )))
}

/// Runs the commands; returns the process exit code.
pub async fn run(cmds: &[ClientCommand]) -> i32 {
    let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok();
    let proxy = match dbus::client(address.as_deref()).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot connect to the update engine over D-Bus: {e}");
            return 1;
        }
    };
    for cmd in cmds {
        let code = match run_one(&proxy, *cmd).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        };
        if code != 0 {
            return code;
        }
    }
    0
}

async fn run_one(proxy: &ManagerClientProxy<'_>, cmd: ClientCommand) -> zbus::Result<i32> {
    match cmd {
        ClientCommand::Status => {
            print!("{}", snapshot(proxy.get_status().await?).to_client_text());
            Ok(0)
        }
        ClientCommand::ResetStatus => {
            proxy.reset_status().await?;
            Ok(0)
        }
        ClientCommand::CheckForUpdate => {
            proxy.attempt_update().await?;
            println!("Initiating update check and install.");
            Ok(0)
        }
        ClientCommand::Update => {
            // Subscribe first so no transition is missed between the call and the stream.
            let mut signals = proxy.receive_status_update().await?;
            proxy.attempt_update().await?;
            println!("Initiating update check and install.");
            let mut follower = UpdateFollower::default();
            if let Some(done) =
                follower.observe(snapshot(proxy.get_status().await?).current_operation)
            {
                return Ok(report(done));
            }
            while let Some(signal) = signals.next().await {
                let s = signal_snapshot(&signal)?;
                eprintln!("{} {:.1}%", s.current_operation, s.progress * 100.0);
                if let Some(done) = follower.observe(s.current_operation) {
                    return Ok(report(done));
                }
            }
            eprintln!("error: the update engine went away");
            Ok(1)
        }
        ClientCommand::WatchForUpdates => {
            let mut signals = proxy.receive_status_update().await?;
            while let Some(signal) = signals.next().await {
                let s = signal_snapshot(&signal)?;
                print!("{}", s.to_client_text());
                let _ = std::io::stdout().flush();
            }
            Ok(0)
        }
    }
}

fn report(outcome: UpdateOutcome) -> i32 {
    match outcome {
        UpdateOutcome::Staged => {
            println!("Update succeeded -- reboot needed.");
            0
        }
        UpdateOutcome::NoUpdate => {
            println!("No update available.");
            0
        }
        UpdateOutcome::Failed(why) => {
            eprintln!("Update failed: {why}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use UpdateStatus as S;

    #[test]
    fn flags() {
        assert_eq!(
            parse_args(&["-status"]).unwrap(),
            vec![ClientCommand::Status]
        );
        assert_eq!(
            parse_args(&["--update", "-reset_status"]).unwrap(),
            vec![ClientCommand::ResetStatus, ClientCommand::Update]
        );
        assert!(parse_args(&["-bogus"])
            .unwrap_err()
            .contains("unknown flag -bogus"));
        assert!(parse_args::<&str>(&[]).is_err());
    }

    #[test]
    fn follower_outcomes() {
        let run = |seq: &[S]| {
            let mut f = UpdateFollower::default();
            seq.iter().find_map(|s| f.observe(*s))
        };
        assert_eq!(
            run(&[
                S::Idle,
                S::CheckingForUpdate,
                S::UpdateAvailable,
                S::Downloading,
                S::Verifying,
                S::Finalizing,
                S::UpdatedNeedReboot
            ]),
            Some(UpdateOutcome::Staged)
        );
        assert_eq!(
            run(&[S::Idle, S::CheckingForUpdate, S::Idle]),
            Some(UpdateOutcome::NoUpdate)
        );
        assert!(matches!(
            run(&[S::CheckingForUpdate, S::Downloading, S::ReportingErrorEvent]),
            Some(UpdateOutcome::Failed(_))
        ));
        assert!(matches!(
            run(&[S::CheckingForUpdate, S::Downloading, S::Idle]),
            Some(UpdateOutcome::Failed(_))
        ));
        assert_eq!(
            run(&[S::Idle, S::Idle]),
            None,
            "still waiting for the check to start"
        );
        assert_eq!(
            run(&[S::UpdatedNeedReboot]),
            Some(UpdateOutcome::Staged),
            "already staged"
        );
    }
}
