/// mimalloc: faster than glibc's allocator on this allocation-heavy
/// workload, and it hands freed memory back instead of keeping it in
/// per-thread arenas (peak RSS; see BENCHMARKS.md). Built without
/// transparent huge pages (`no_thp`): with them, memory freed after a burst
/// stays resident in 2 MiB pages instead of going back to the system.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::server::main::<chat_service::AppState>(chat_service::Config::parse()).await
}
