//! The probe routes every server has: `/healthz`, `/readyz`, `/metrics`.

use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;

use crate::error::ErrorBody;
use crate::ApiError;

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/healthz", responses((status = 200)))]
pub async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /openapi.json`: the service's OpenAPI document.
pub async fn openapi<D: utoipa::OpenApi>() -> axum::Json<serde_json::Value> {
    axum::Json(crate::openapi::json(&D::openapi()))
}

/// This OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "the document", content_type = "application/json")))]
pub fn openapi_doc() {}

/// Metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub fn metrics_doc() {}

/// One backend's answer to a readiness check.
#[derive(Debug)]
pub struct Check {
    /// What the backend is for (`store`, `log`, …): the key in the body.
    pub role: &'static str,
    /// Which implementation serves it (`sqlite`, `kafka`, …).
    pub backend: &'static str,
    /// `Err` says why it cannot serve.
    pub result: Result<(), String>,
}

impl Check {
    pub fn new<E: std::fmt::Display>(
        role: &'static str,
        backend: &'static str,
        result: Result<(), E>,
    ) -> Self {
        Self {
            role,
            backend,
            result: result.map_err(|e| e.to_string()),
        }
    }
}

/// Readiness: every backend the service needs answers. 200 with
/// `{"status": "ready", <role>: <backend>, …}`, or 503 naming the roles
/// that failed (the reasons go to the log, not to the caller).
#[utoipa::path(
    get,
    path = "/readyz",
    responses((status = 200), (status = 503, body = ErrorBody))
)]
pub fn readyz(checks: Vec<Check>) -> Response {
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.result.is_err())
        .map(|c| c.role)
        .collect();
    if !failed.is_empty() {
        tracing::warn!(?checks, "readiness check failed");
        return ApiError::unavailable(format!("unavailable: {}", failed.join(", ")))
            .into_response();
    }
    let mut body = serde_json::Map::new();
    body.insert("status".into(), "ready".into());
    for check in checks {
        body.insert(check.role.into(), check.backend.into());
    }
    axum::Json(serde_json::Value::Object(body)).into_response()
}

/// `/healthz`, `/readyz` (the service's own check) and `/metrics`.
pub fn router<S>(readyz: MethodRouter<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", readyz)
        .route("/metrics", get(crate::metrics::render))
}

/// [`router`] plus `GET /openapi.json` serving `D`'s document.
pub fn with_openapi<D, S>(readyz: MethodRouter<S>) -> Router<S>
where
    D: utoipa::OpenApi + 'static,
    S: Clone + Send + Sync + 'static,
{
    router(readyz).route("/openapi.json", get(openapi::<D>))
}

/// The probes' documentation, part of every service's document
/// ([`crate::openapi::Conventions`]).
#[derive(utoipa::OpenApi)]
#[openapi(paths(healthz, readyz, metrics_doc, openapi_doc))]
pub struct ProbesDoc;

#[cfg(test)]
mod tests {
    #[test]
    fn every_probe_is_documented() {
        use utoipa::OpenApi;
        crate::openapi::assert_documented(include_str!("probes.rs"), &super::ProbesDoc::openapi());
    }
}
