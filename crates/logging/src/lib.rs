//! How every fastpatch program logs (the one copy of it): `tracing` events to stderr through an
//! `EnvFilter`; colour only when stderr is a terminal and `NO_COLOR` is unset, so a journal, a
//! file or a pipe gets plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Logs with `filter` (EnvFilter syntax, e.g. `info` or `fastpatch_disk=debug`). A filter that
/// does not parse is reported on stderr and `fallback` is used instead. A second call (a test
/// that runs two commands in one process) keeps the first set-up.
pub fn init(filter: &str, fallback: &str) {
    let (filter, warning) = choose(filter, fallback);
    if let Some(warning) = warning {
        eprintln!("warning: {warning}");
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .try_init();
}

/// `filter` parsed; or, when it does not parse, `fallback` (`warn` if that does not parse
/// either) with a warning that says why.
fn choose(filter: &str, fallback: &str) -> (EnvFilter, Option<String>) {
    match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => {
            let used = EnvFilter::try_new(fallback).unwrap_or_else(|_| EnvFilter::new("warn"));
            let warning = format!("log filter {filter:?} not understood ({e}); using {used}");
            (used, Some(warning))
        }
    }
}

/// Colour codes only on a terminal, and not with `NO_COLOR` set (no-color.org).
pub fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_falls_back_and_says_why() {
        let (f, warning) = choose("info,fastpatch_disk=debug", "warn");
        assert_eq!(
            (f.to_string().contains("fastpatch_disk=debug"), warning),
            (true, None)
        );
        let (f, warning) = choose("info,=[", "error");
        assert_eq!(f.to_string(), "error");
        let warning = warning.expect("a warning");
        assert!(
            warning.starts_with("log filter \"info,=[\" not understood ("),
            "{warning}"
        );
        assert!(warning.ends_with("; using error"), "{warning}");
        let (f, _) = choose("=[", "also=[");
        assert_eq!(f.to_string(), "warn");
    }
}
