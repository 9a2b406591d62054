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
    let config = chat_backend::Config::parse();
    service_kit::telemetry::init(config.log_format);
    let app = chat_backend::App::build(config).await?;
    let addr = app.local_addr();
    let data =
        std::fs::canonicalize(app.data_dir()).unwrap_or_else(|_| app.data_dir().to_path_buf());
    // Through the log, in the configured format: nothing else goes to stdout.
    tracing::info!(
        url = %format!("http://{addr}/"),
        data = %data.display(),
        "chat-backend listening (the web client is at the url)"
    );
    app.run_until_stopped(service_kit::shutdown::signal()).await
}
