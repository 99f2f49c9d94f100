//! How every fastpatch program logs (the one copy of it): `tracing` events to stderr through an
//! `EnvFilter`; colour only when stderr is a terminal and `NO_COLOR` is unset, so a journal, a
//! file or a pipe gets plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Logs with `filter` (EnvFilter syntax, e.g. `info` or `fastpatch_disk=debug`). A filter that
/// does not parse is reported on stderr and `fallback` is used instead. A second call (a test
/// that runs two commands in one process) keeps the first set-up.
pub fn init(filter: &str, fallback: &str) {
    let filter = parse(filter, fallback).unwrap_or_else(|(e, fallback)| {
        eprintln!("warning: log filter {filter:?} not understood ({e}); using {fallback:?}");
        fallback
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .try_init();
}

/// `filter` parsed, or why not with the fallback to use (which must parse; `warn` if not).
fn parse(filter: &str, fallback: &str) -> Result<EnvFilter, (String, EnvFilter)> {
    EnvFilter::try_new(filter).map_err(|e| {
        let fallback = EnvFilter::try_new(fallback).unwrap_or_else(|_| EnvFilter::new("warn"));
        (e.to_string(), fallback)
    })
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
        assert!(parse("info,fastpatch_disk=debug", "warn").is_ok());
        let (why, fallback) = parse("info,=[", "warn").expect_err("not a filter");
        assert!(!why.is_empty());
        assert_eq!(fallback.to_string(), "warn");
        let (_, fallback) = parse("=[", "also=[").expect_err("not a filter");
        assert_eq!(fallback.to_string(), "warn");
    }
}
