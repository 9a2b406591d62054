use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = chat_service::Config::parse();
    service_kit::telemetry::init(config.log_format);
    let app = chat_service::App::build(config).await?;
    tracing::info!(addr = %app.local_addr(), "chat-service listening");
    app.run_until_stopped(service_kit::shutdown::signal()).await
}
