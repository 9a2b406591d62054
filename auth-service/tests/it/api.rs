use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{error_code, spawn, Backend};

crate::on_both_backends!(health_metrics_and_openapi);

async fn health_metrics_and_openapi(backend: Backend) {
    let app = spawn(backend).await;
    assert_eq!(app.get("/healthz", None).await.status(), StatusCode::OK);
    let ready: Value = app.get("/readyz", None).await.json().await.expect("json");
    let expected = if backend == Backend::Sqlite {
        "sqlite"
    } else {
        "postgres"
    };
    assert_eq!(ready["database"], expected);

    app.signed_up("olga").await;
    let metrics = app.get("/metrics", None).await.text().await.expect("text");
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(metrics.contains("auth_logins_total"), "{metrics}");
    assert!(metrics.contains("password_hash_seconds"), "{metrics}");
    testkit::assert_metrics_described(&metrics);

    let doc: Value = app
        .get("/openapi.json", None)
        .await
        .json()
        .await
        .expect("json");
    for path in [
        "/users",
        "/login",
        "/token/refresh",
        "/logout",
        "/users/me",
        "/users/{id}",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from OpenAPI"
        );
    }

    let r = app.get("/no/such/route", None).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = app.get("/healthz", None).await;
    assert!(r.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn browsers_on_configured_origins_only() {
    let app = crate::helpers::spawn_with(Backend::Sqlite, |c| {
        c.cors = service_kit::cors::CorsConfig::origins(&["https://app.example"]).expect("origin");
    })
    .await;
    let base = format!("http://{}", app.addr);
    testkit::assert_cors(
        &base,
        "/login",
        Some("https://app.example"),
        "https://evil.example",
    )
    .await;
    let closed = spawn(Backend::Sqlite).await;
    let base = format!("http://{}", closed.addr);
    testkit::assert_cors(&base, "/login", None, "https://app.example").await;
}
