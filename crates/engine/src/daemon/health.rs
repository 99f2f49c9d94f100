//! Running the health checks of the gate (the verdict itself is [`crate::health::decide`]).

use std::time::Duration;

use tokio::process::Command;

use super::config::HealthConfig;
use crate::health::HealthObservation;

/// Runs one round: every unit must be `active`, every command must exit 0 in time.
pub async fn observe(cfg: &HealthConfig) -> HealthObservation {
    let timeout = Duration::from_secs(cfg.check_timeout_secs.max(1));
    let mut failing = Vec::new();
    for unit in &cfg.units {
        let argv = [
            "systemctl".to_string(),
            "is-active".into(),
            "--quiet".into(),
            unit.clone(),
        ];
        if let Err(why) = run(&argv, timeout).await {
            failing.push(format!("unit {unit} not active ({why})"));
        }
    }
    for argv in &cfg.commands {
        if let Err(why) = run(argv, timeout).await {
            failing.push(format!("check {:?} failed ({why})", argv.join(" ")));
        }
    }
    HealthObservation::pending(failing)
}

/// The unit that runs the checks of [`observe`] before `boot-complete.target`
/// (`dist/systemd/fastpatch-health-check.service`, `fastpatch engine health-check`).
pub const CHECK_UNIT: &str = "fastpatch-health-check.service";
/// systemd's synchronization point for "this boot is good" (systemd.special(7)).
pub const BOOT_COMPLETE: &str = "boot-complete.target";

/// One round of the gate on a systemd machine: passed when `boot-complete.target` is active;
/// failed for good when [`CHECK_UNIT`] failed (the target then never starts); otherwise
/// still waiting for the boot to get there.
pub async fn observe_boot_complete(cfg: &HealthConfig) -> HealthObservation {
    let timeout = Duration::from_secs(cfg.check_timeout_secs.max(1));
    let systemctl = |verb: &str, unit: &str| {
        ["systemctl", verb, "--quiet", unit]
            .map(String::from)
            .to_vec()
    };
    if run(&systemctl("is-active", BOOT_COMPLETE), timeout)
        .await
        .is_ok()
    {
        return HealthObservation::pending(Vec::new());
    }
    // `systemctl is-failed` exits 0 when the unit failed.
    if run(&systemctl("is-failed", CHECK_UNIT), timeout)
        .await
        .is_ok()
    {
        return HealthObservation {
            failing: vec![format!(
                "{CHECK_UNIT} failed, so {BOOT_COMPLETE} was not reached (journalctl -u {CHECK_UNIT})"
            )],
            settled: true,
        };
    }
    HealthObservation::pending(vec![format!("{BOOT_COMPLETE} not reached yet")])
}

/// Runs `argv`; Ok when it exits 0 within `timeout`.
pub async fn run(argv: &[String], timeout: Duration) -> Result<(), String> {
    let (prog, args) = argv.split_first().ok_or("empty command")?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.status()).await {
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
        Ok(Err(e)) => Err(format!("cannot run {prog}: {e}")),
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_must_exit_zero() {
        let mut cfg = HealthConfig {
            commands: vec![vec!["true".into()]],
            ..HealthConfig::default()
        };
        assert!(observe(&cfg).await.failing.is_empty());
        cfg.commands
            .push(vec!["sh".into(), "-c".into(), "exit 3".into()]);
        cfg.commands.push(vec!["/nonexistent/check".into()]);
        let failing = observe(&cfg).await.failing;
        assert_eq!(failing.len(), 2, "{failing:?}");
        assert!(failing[0].contains("exit status: 3"), "{failing:?}");
        assert!(failing[1].contains("cannot run"), "{failing:?}");
        cfg.check_timeout_secs = 1;
        cfg.commands = vec![vec!["sleep".into(), "5".into()]];
        assert!(observe(&cfg).await.failing[0].contains("no answer within 1s"));
    }
}
