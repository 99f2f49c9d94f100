//! locksmithctl: manage the reboot semaphore (locksmith compatible, etcd v3).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(fastpatch_locksmith::cli::run_locksmithctl(&args));
}
