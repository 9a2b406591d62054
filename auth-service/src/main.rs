/// mimalloc: faster than glibc's allocator on this allocation-heavy
/// workload, and it hands freed memory back instead of keeping it in
/// per-thread arenas (peak RSS; see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::server::main::<auth_service::AppState>(auth_service::Config::parse()).await
}
