//! Prometheus metrics: one process-wide recorder, an HTTP middleware and the
//! `/metrics` handler.
//!
//! The `metrics` facade is process-global by design (like `tracing`), so the
//! recorder is installed once, the first time any service asks for it; every
//! app in the process (the all-in-one binary, or many test apps) shares it.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

fn process() -> &'static metrics_process::Collector {
    PROCESS.get_or_init(metrics_process::Collector::default)
}

/// The process's Prometheus handle, installing the recorder on first use.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Another recorder may already be installed (for instance by an
            // embedding program); then ours only renders what it records.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            process().describe();
            metrics::describe_counter!(
                "http_requests_total",
                "HTTP requests answered, by service, method, route template and status."
            );
            metrics::describe_histogram!(
                "http_request_duration_seconds",
                metrics::Unit::Seconds,
                "Time to answer an HTTP request (until the response head), by service, method, route template and status."
            );
            metrics::describe_gauge!(
                "http_connections_open",
                "HTTP connections being served now."
            );
            metrics::describe_counter!(
                "http_connections_refused_total",
                "Connections answered 503 because --max-connections were open."
            );
            handle
        })
        .clone()
}

/// `GET /metrics`: the Prometheus text exposition, with the process's
/// own metrics (`process_*`: CPU, memory, file descriptors, threads) read
/// at each scrape.
pub async fn render() -> Response {
    let handle = handle();
    process().collect();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// Middleware recording `http_requests_total` and
/// `http_request_duration_seconds` by service, method, route and status,
/// and logging one access line per request at `info` (inside the request's
/// span, which carries its request id). The route is the matched path
/// template and the method one of the standard ones (else `other`), so
/// clients cannot grow the label sets.
pub async fn track(service: &'static str, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    }
    .to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let elapsed = start.elapsed();
    tracing::info!(
        target: "access",
        method = %method,
        route = %route,
        status = response.status().as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    let status = response.status().as_u16().to_string();
    let labels = [
        ("service", service.to_owned()),
        ("method", method),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
    response
}
