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
    let config = aggregator::Config::parse();
    service_kit::telemetry::init(config.log_format);
    let app = aggregator::App::build(config).await?;
    tracing::info!(addr = %app.local_addr(), "aggregator listening");
    app.run_until_stopped(service_kit::shutdown::signal()).await
}
