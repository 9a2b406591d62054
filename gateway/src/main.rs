/// mimalloc, as in every binary of the workspace (see the aggregator's).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = gateway::config::Config::parse();
    service_kit::telemetry::init(config.log_format);
    let app = gateway::startup::App::build(config).await?;
    tracing::info!(addr = %app.local_addr(), "gateway listening");
    app.run_until_stopped(service_kit::shutdown::signal()).await
}
