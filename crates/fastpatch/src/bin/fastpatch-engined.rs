//! `fastpatch-engined`: the update engine daemon alone (`fastpatch engine …` without the
//! other areas' commands), for a machine to keep resident: less code to map at start-up.

use clap::Parser;

/// The update engine daemon: `run`, `health-check`, `link-extensions` (as `fastpatch engine`).
#[derive(Parser)]
#[command(name = "fastpatch-engined", version)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax); default `info`.
    #[arg(long, global = true, env = "FASTPATCH_LOG")]
    log: Option<String>,

    #[command(subcommand)]
    command: fastpatch_engine::daemon::cli::EngineCommand,
}

fn main() {
    let cli = Cli::parse();
    fastpatch_logging::init(cli.log.as_deref().unwrap_or("info"), "warn");
    if let Err(err) = fastpatch_engine::daemon::cli::run_engine(cli.command) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
