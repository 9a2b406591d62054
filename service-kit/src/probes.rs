//! The probe routes every server has: `/healthz`, `/readyz`, `/metrics`.

use axum::routing::{get, MethodRouter};
use axum::Router;

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/healthz", responses((status = 200)))]
pub async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /openapi.json`: the service's OpenAPI document.
pub async fn openapi<D: utoipa::OpenApi>() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(D::openapi())
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
