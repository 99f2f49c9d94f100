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
    HealthObservation { failing }
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
