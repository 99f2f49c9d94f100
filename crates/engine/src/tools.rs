//! The commands around the daemon, which talk to it or to the disk: `fastpatch client` (and
//! the `update_engine_client` name), `fastpatch status`, `fastpatch rollback`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use fastpatch_boot_control::BootControl;

use crate::daemon::cli::{runtime, ConfigArgs};
use crate::daemon::config::BootedSlot;
use crate::status::UpdateStatus;
use crate::status_report::StatusSnapshot;

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// update_engine_client flags: -status, -check_for_update, -update, -reset_status,
    /// -watch_for_updates.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub flags: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
    /// D-Bus address (default: DBUS_SYSTEM_BUS_ADDRESS, else the system bus).
    #[arg(long, env = "DBUS_SYSTEM_BUS_ADDRESS")]
    pub bus: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The disk holding USR-A/USR-B (overrides the engine config).
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// The booted slot, `a` or `b` (overrides the engine config; default: kernel command line).
    #[arg(long, value_parser = ["a", "b", "A", "B"])]
    pub booted: Option<String>,
}

/// `fastpatch client FLAGS` / `update_engine_client FLAGS`: returns the exit code.
pub fn run_client(flags: &[String]) -> i32 {
    let cmds = match crate::client::parse_args(flags) {
        Ok(c) => c,
        Err(usage) => {
            eprintln!("{usage}");
            return 2;
        }
    };
    match runtime() {
        Ok(rt) => rt.block_on(crate::client::run(&cmds)),
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// When invoked as `update_engine_client`, runs the client and returns its exit code.
pub fn dispatch_argv0() -> Option<i32> {
    let mut args = std::env::args();
    let argv0 = args.next()?;
    let name = std::path::Path::new(&argv0).file_name()?.to_str()?;
    if name != "update_engine_client" {
        return None;
    }
    let flags: Vec<String> = args.collect();
    Some(run_client(&flags))
}

/// `fastpatch status [--json]`.
pub fn run_status(args: StatusArgs) -> Result<()> {
    let rt = runtime()?;
    let snap = rt.block_on(async {
        let proxy = crate::dbus::client(args.bus.as_deref())
            .await
            .context("connecting to the update engine over D-Bus")?;
        let t = proxy.get_status().await.context("GetStatus")?;
        anyhow::Ok(StatusSnapshot {
            last_checked_time: t.0,
            progress: t.1,
            current_operation: t.2.parse().unwrap_or(UpdateStatus::Idle),
            new_version: t.3,
            new_size: t.4,
        })
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snap)?);
        return Ok(());
    }
    print!("{}", human_status(&snap));
    if std::io::stdout().is_terminal()
        && matches!(
            snap.current_operation,
            UpdateStatus::Downloading | UpdateStatus::Verifying | UpdateStatus::Finalizing
        )
    {
        let bar = indicatif::ProgressBar::new(1000);
        bar.set_style(
            indicatif::ProgressStyle::with_template("[{bar:40}] {percent:>3}%")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_position((snap.progress.clamp(0.0, 1.0) * 1000.0) as u64);
        bar.abandon();
    }
    Ok(())
}

/// The modern, human status text.
pub fn human_status(s: &StatusSnapshot) -> String {
    let state = match s.current_operation {
        UpdateStatus::Idle => "idle",
        UpdateStatus::CheckingForUpdate => "checking for an update",
        UpdateStatus::UpdateAvailable => "update available",
        UpdateStatus::Downloading => "downloading",
        UpdateStatus::Verifying => "verifying",
        UpdateStatus::Finalizing => "finalizing",
        UpdateStatus::UpdatedNeedReboot => "updated, reboot needed",
        UpdateStatus::ReportingErrorEvent => "reporting an error",
    };
    let mut out = format!("State:        {state} ({})\n", s.current_operation);
    if s.new_version != crate::status_report::NO_VERSION {
        out += &format!("New version:  {} ({} bytes)\n", s.new_version, s.new_size);
    }
    if matches!(
        s.current_operation,
        UpdateStatus::Downloading | UpdateStatus::Verifying | UpdateStatus::Finalizing
    ) {
        out += &format!("Progress:     {:.1}%\n", s.progress * 100.0);
    }
    out += &format!(
        "Last check:   {}\n",
        if s.last_checked_time == 0 {
            "never".to_string()
        } else {
            format!("{} (unix time)", s.last_checked_time)
        }
    );
    out
}

/// `fastpatch rollback`: make the other slot boot next, if it holds a known-good image.
pub fn run_rollback(args: RollbackArgs) -> Result<()> {
    let mut cfg = args.config.load()?;
    if let Some(d) = args.disk {
        cfg.disk = Some(d);
    }
    if let Some(b) = args.booted {
        cfg.booted_slot = if b.eq_ignore_ascii_case("a") {
            BootedSlot::A
        } else {
            BootedSlot::B
        };
    }
    let mut boot = crate::daemon::boot_control(&cfg)?;
    let disk = boot.disk_path().to_path_buf();
    let outcome = boot
        .rollback()
        .with_context(|| format!("rolling back on {}", disk.display()))?;
    let state = boot.slot_state(outcome.next)?;
    println!(
        "Rolled back: {} (partition {}, {}) boots next; {} stays as it is.",
        outcome.next,
        state.partition_index,
        state.unique_guid,
        boot.booted()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_status_text() {
        let s = StatusSnapshot {
            last_checked_time: 0,
            progress: 0.5,
            current_operation: UpdateStatus::Downloading,
            new_version: "2".into(),
            new_size: 10,
        };
        assert_eq!(
            human_status(&s),
            "State:        downloading (UPDATE_STATUS_DOWNLOADING)\nNew version:  2 (10 bytes)\nProgress:     50.0%\nLast check:   never\n"
        );
        assert_eq!(
            human_status(&StatusSnapshot::default()),
            "State:        idle (UPDATE_STATUS_IDLE)\nLast check:   never\n"
        );
    }
}
