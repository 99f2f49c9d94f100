use clap::Parser;
use std::io::IsTerminal;

/// mimalloc instead of glibc's malloc: under load glibc's per-thread arenas grew and
/// shrank their heaps (an `mprotect` every few thousand requests) and malloc + free were
/// about 14 % of the server's CPU on the update-check path; see docs/benchmarks.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a journal, a file or a pipe gets plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    fastpatch_server::cli::run(fastpatch_server::cli::Cli::parse()).await
}
