//! What every OpenAPI document of the backend has in common, applied as a
//! [`utoipa::Modify`] after a service's `#[derive(OpenApi)]`:
//!
//! - the probes every server has (`/healthz`, `/readyz`, `/metrics`,
//!   `/openapi.json`);
//! - the `bearer` security scheme (an access token from auth-service's
//!   `POST /login`) that secured operations name;
//! - a 401 response on every secured operation, and the 400/413/415/422
//!   answers of the shared extractors where an operation takes a body or
//!   parameters;
//! - the JSON error body ([`crate::error::ErrorBody`]) on every 4xx and 5xx
//!   response that does not name a body of its own;
//! - in the served JSON ([`json`]), Server-Sent Events described event by
//!   event: OpenAPI 3.1 reads the `schema` of `text/event-stream` as one
//!   event (`event`, `id`, `data`), whose `data` is JSON text of the schema
//!   the operation names.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response};

/// Name of the security scheme secured operations use.
pub const BEARER: &str = "bearer";

/// The shared conventions; add with `#[openapi(modifiers(&Conventions))]`.
pub struct Conventions;

impl utoipa::Modify for Conventions {
    fn modify(&self, doc: &mut OpenApi) {
        doc.merge(<crate::probes::ProbesDoc as utoipa::OpenApi>::openapi());
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token from `POST /login`."))
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                conform(op);
            }
        }
    }
}

fn conform(op: &mut Operation) {
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_body = op.request_body.is_some();
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let responses = &mut op.responses.responses;
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status.into())
            .or_insert_with(|| RefOr::T(Response::new(description)));
    };
    if secured {
        add("401", "missing, malformed, expired or revoked access token");
    }
    // What the shared extractors and layers answer (`crate::extract`,
    // `crate::layers`), whatever the handler.
    if has_body {
        add("400", "the body is not JSON");
        add("413", "the body is larger than the limit");
        add("415", "the body is not `application/json`");
        add("422", "the JSON does not have the documented shape");
    }
    if has_params {
        add("400", "a path or query parameter is malformed");
    }
    for (status, response) in responses.iter_mut() {
        let error = status.starts_with('4') || status.starts_with('5');
        if let (true, RefOr::T(response)) = (error, response) {
            if response.content.is_empty() {
                response.content.insert(
                    "application/json".into(),
                    Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                );
            }
        }
    }
}

/// `docs` merged into one document titled `title`: paths, schemas and
/// security schemes of each (the all-in-one serves every service's routes
/// on one port).
pub fn merged(title: &str, description: &str, docs: impl IntoIterator<Item = OpenApi>) -> OpenApi {
    let mut out = OpenApi::default();
    for doc in docs {
        out.merge(doc);
    }
    out.info.title = title.into();
    out.info.description = Some(description.into());
    out
}

/// The document as served: `doc` as JSON, with each `text/event-stream`
/// response's schema `S` turned into the schema of one event, whose `data`
/// holds `S` as JSON text (`contentMediaType` / `contentSchema`, which
/// utoipa's types cannot express).
pub fn json(doc: &OpenApi) -> serde_json::Value {
    let mut value = serde_json::to_value(doc).unwrap_or_default();
    let Some(paths) = value.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return value;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for op in item.values_mut() {
            let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) else {
                continue;
            };
            for response in responses.values_mut() {
                if let Some(stream) = response.pointer_mut("/content/text~1event-stream") {
                    if let Some(data) = stream.get("schema").cloned() {
                        stream["schema"] = serde_json::json!({
                            "type": "object",
                            "description": "One Server-Sent Event.",
                            "required": ["data"],
                            "properties": {
                                "event": { "type": "string" },
                                "id": { "type": "string" },
                                "data": {
                                    "type": "string",
                                    "contentMediaType": "application/json",
                                    "contentSchema": data
                                }
                            }
                        });
                    }
                }
            }
        }
    }
    value
}

/// A test, `every_route_is_documented`, that fails when the routes in
/// `$source` (usually the service's routes file, read with `include_str!`)
/// include one that the
/// document `$doc` does not describe (see [`assert_documented`]).
#[macro_export]
macro_rules! test_every_route_is_documented {
    ($source:expr, $doc:expr) => {
        #[cfg(test)]
        #[test]
        fn every_route_is_documented() {
            $crate::openapi::assert_documented($source, &$doc);
        }
    };
}

/// Panics unless `doc` documents every route registered in `source`: for
/// each service's test that fails when a route is added without its
/// documentation.
///
/// # Panics
///
/// Naming the undocumented routes.
pub fn assert_documented(source: &str, doc: &OpenApi) {
    let missing = undocumented_routes(source, &json(doc));
    assert!(missing.is_empty(), "undocumented routes: {missing:?}");
}

/// The routes registered in `source` (Rust, one `.route("path", get(…)…)`
/// call per line) that `doc` (as served, see [`json`]) does not document,
/// as `"METHOD path"`.
pub fn undocumented_routes(source: &str, doc: &serde_json::Value) -> Vec<String> {
    let mut missing = Vec::new();
    for line in source.lines() {
        let Some(rest) = line.trim().strip_prefix(".route(\"") else {
            continue;
        };
        let Some((path, handlers)) = rest.split_once('"') else {
            continue;
        };
        for method in ["get", "post", "put", "patch", "delete"] {
            let called = handlers.match_indices(method).any(|(at, _)| {
                let before = handlers[..at].chars().last();
                let after = handlers[at + method.len()..].chars().next();
                matches!(before, Some('(' | '.' | ' ' | ',')) && after == Some('(')
            });
            if called && doc["paths"][path][method].is_null() {
                missing.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_without_documentation_are_found() {
        let doc = serde_json::json!({ "paths": { "/a": { "get": {} } } });
        let source = r#"
            Router::new()
                .route("/a", get(a).post(b))
                .route("/c", get(c))
        "#;
        assert_eq!(undocumented_routes(source, &doc), ["POST /a", "GET /c"]);
    }
}
