//! The middleware stack every service puts around its router.

use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::cors::CorsConfig;
use crate::ApiError;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Settings for [`apply`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request body.
    pub body_bytes: usize,
    /// Requests taking longer get 408.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 64 * 1024,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Wraps `router` with request ids (`x-request-id`: a client's is kept only
/// when it is 1 to 128 characters of `A-Z a-z 0-9 - _ . :`, else replaced by
/// a fresh UUID, and echoed back), a tracing span per request, HTTP metrics,
/// a timeout, a body limit, JSON error bodies for what the layers and the
/// router refuse themselves (405, 408, 413…), a panic catcher that answers
/// with the JSON 500 instead of dropping the connection, and, outermost,
/// CORS (so every answer, errors included, carries its headers).
pub fn apply(router: Router, service: &'static str, limits: Limits, cors: &CorsConfig) -> Router {
    router
        .fallback(crate::error::not_found_fallback)
        .layer(axum::middleware::from_fn(move |req, next| {
            crate::metrics::track(service, req, next)
        }))
        .layer(RequestBodyLimitLayer::new(limits.body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.timeout,
        ))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                let id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                // The path only: a query string can hold a stream ticket.
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(axum::middleware::from_fn(valid_request_id))
        .layer(cors.layer())
}

/// Whether a client's `x-request-id` is kept: 1 to 128 characters of
/// letters, digits and `- _ . :` (it goes into every log line and back to
/// the client).
fn is_valid_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// Drops a client's request id that [`is_valid_request_id`] refuses, so a
/// fresh one is made.
async fn valid_request_id(mut req: Request, next: Next) -> Response {
    if req
        .headers()
        .get(REQUEST_ID)
        .is_some_and(|id| !is_valid_request_id(id.as_bytes()))
    {
        req.headers_mut().remove(REQUEST_ID);
    }
    next.run(req).await
}

/// Gives an error answer without a JSON body (the router's 405, the
/// timeout's 408, the body limit's 413…) the JSON error body every handler
/// error has, keeping its other headers (`Allow`…).
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed here"),
        StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long"),
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", "the request body is too large"),
        s if s.is_client_error() => ("bad_request", "the request was refused"),
        _ => ("internal", "internal error"),
    };
    let (parts, _) = response.into_parts();
    let mut answer = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::internal().into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app() -> Router {
        let router = Router::new().route(
            "/x",
            get(|| async { "ok" }).post(|body: String| async move { body }),
        );
        apply(
            router,
            "test",
            Limits {
                body_bytes: 16,
                timeout: Duration::from_secs(5),
            },
            &CorsConfig::default(),
        )
    }

    async fn call(
        req: axum::http::Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = app().oneshot(req).await.expect("answer");
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap_or_default(),
        )
    }

    #[tokio::test]
    async fn the_layers_refusals_have_json_bodies() {
        let req = axum::http::Request::delete("/x")
            .body(Body::empty())
            .expect("request");
        let (status, headers, body) = call(req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
        assert!(headers.get(header::ALLOW).is_some(), "Allow is kept");
        assert!(headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/json"));
        let req = axum::http::Request::post("/x")
            .header(header::CONTENT_LENGTH, "1000000")
            .body(Body::from("x".repeat(64)))
            .expect("request");
        let (status, _, body) = call(req).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"]["code"], "body_too_large", "{body}");
        let req = axum::http::Request::get("/nowhere")
            .body(Body::empty())
            .expect("request");
        let (status, _, body) = call(req).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
    }

    #[tokio::test]
    async fn request_ids_are_kept_only_when_short_and_plain() {
        let id_of = |sent: &str| {
            let req = axum::http::Request::get("/x")
                .header("x-request-id", sent)
                .body(Body::empty())
                .expect("request");
            async move {
                let (status, headers, _) = call(req).await;
                assert_eq!(status, StatusCode::OK);
                headers
                    .get("x-request-id")
                    .expect("echoed")
                    .to_str()
                    .expect("text")
                    .to_owned()
            }
        };
        assert_eq!(id_of("abc-123_x.y:z").await, "abc-123_x.y:z");
        for bad in [
            "x".repeat(129),
            "a\tb".into(),
            "quote\"d".into(),
            "sp ace".into(),
        ] {
            let got = id_of(&bad).await;
            assert_ne!(got, bad);
            assert!(uuid_like(&got), "replaced by a fresh id: {got}");
        }
        let req = axum::http::Request::get("/x")
            .body(Body::empty())
            .expect("request");
        let (_, headers, _) = call(req).await;
        assert!(
            headers.get("x-request-id").is_some(),
            "one is made when absent"
        );
    }

    fn uuid_like(s: &str) -> bool {
        s.len() == 36 && s.bytes().filter(|b| *b == b'-').count() == 4
    }
}
