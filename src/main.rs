// jemalloc (tikv-jemallocator, MIT/Apache-2.0): glibc malloc was ~13% of
// the daemon's CPU under intake (arena locking and consolidation across the
// tokio workers, the history writer and sled's IO threads). mimalloc was as
// fast but held more memory per idle connection; issue 22's note has both.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    match sluice::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
