/// mimalloc: faster than glibc's allocator on this allocation-heavy
/// workload, and it hands freed memory back instead of keeping it in
/// per-thread arenas (peak RSS; see BENCHMARKS.md).
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
    println!("chat-backend listening on http://{addr}  (web client at /)");
    println!("data directory: {}", data.display());
    tracing::info!(%addr, data = %data.display(), "chat-backend started");
    app.run_until_stopped(service_kit::shutdown::signal()).await
}
