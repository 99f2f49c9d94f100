use clap::Parser;

/// mimalloc instead of glibc's malloc: under load glibc's per-thread arenas grew and
/// shrank their heaps (an `mprotect` every few thousand requests) and malloc + free were
/// about 14 % of the server's CPU on the update-check path; see docs/benchmarks.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    const DEFAULT_FILTER: &str = "info,sqlx=warn";
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_FILTER.to_owned());
    fastpatch_logging::init(&filter, DEFAULT_FILTER);
    fastpatch_server::cli::run(fastpatch_server::cli::Cli::parse()).await
}
