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
    disable_transparent_huge_pages();
    fastpatch_server::cli::run(fastpatch_server::cli::Cli::parse()).await
}

/// No transparent huge pages for this process. mimalloc asks for them on its arenas, and
/// about 11 minutes after the start the kernel's khugepaged collapsed ranges that held a
/// few live 4 KiB pages into whole 2 MiB ones: in every soak RSS turned upward at that
/// minute (+10 % to +17 %), and AnonHugePages went from 10–16 MiB to 22–30 MiB. A heap of
/// about 100 MiB gains nothing from huge pages; a fleet operator wants a flat RSS. (The
/// `no_thp` feature of mimalloc stops its own requests; this covers systems whose THP
/// setting is `always`.)
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and changes only this process's
    // memory policy.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not turn off transparent huge pages; RSS may grow when the kernel collapses pages"
        );
    }
}
