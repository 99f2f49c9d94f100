//! locksmithctl: manage the reboot semaphore (locksmith compatible, etcd v3).

use std::io::IsTerminal;

fn main() {
    let filter = std::env::var("LOCKSMITHCTL_LOG").unwrap_or_else(|_| "error".into());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a journal, a file or a pipe gets plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = fastpatch_locksmith::ctl::run(&args, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
