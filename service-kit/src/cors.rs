//! Cross-origin requests from browsers (CORS).
//!
//! Clients authenticate with a bearer token in the `Authorization` header,
//! never with cookies, so no credentials mode is needed and a page on an
//! allowed origin may call every route. Which origins are allowed is
//! configuration: none by default (a page served by the backend itself is
//! same-origin and needs no CORS), a list of exact origins, or `*` for any.
//! A preflight (`OPTIONS` with `Access-Control-Request-Method`) is always
//! answered; for an origin that is not allowed the answer carries no
//! `Access-Control-Allow-Origin`, so the browser refuses the real request.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight's answer.
const MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS settings every service takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CorsConfig {
    /// Origins whose pages may call this API from a browser
    /// (`https://app.example.com`, comma-separated, exact match), or `*`
    /// for any origin. None by default.
    #[arg(
        long = "cors-allowed-origins",
        env = "CORS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_parser = parse_origin
    )]
    pub allowed_origins: Vec<Origin>,
}

/// One allowed origin, or any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Any,
    Exact(HeaderValue),
}

/// `*`, or `scheme://host[:port]` with nothing after it: what a browser
/// sends in `Origin`.
fn parse_origin(raw: &str) -> Result<Origin, String> {
    let raw = raw.trim();
    if raw == "*" {
        return Ok(Origin::Any);
    }
    let rest = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"))
        .ok_or_else(|| format!("{raw:?}: an origin starts with http:// or https://"))?;
    if rest.is_empty() || rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err(format!(
            "{raw:?}: an origin is scheme://host[:port], with no path"
        ));
    }
    HeaderValue::from_str(raw)
        .map(Origin::Exact)
        .map_err(|_| format!("{raw:?}: not a valid origin"))
}

impl CorsConfig {
    /// These origins (each `*` or `scheme://host[:port]`), as the flag
    /// would parse them.
    pub fn origins(origins: &[&str]) -> Result<Self, String> {
        Ok(Self {
            allowed_origins: origins
                .iter()
                .map(|o| parse_origin(o))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The layer answering preflights and adding CORS headers to responses.
    pub fn layer(&self) -> CorsLayer {
        let origins = if self.allowed_origins.contains(&Origin::Any) {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(self.allowed_origins.iter().filter_map(|o| match o {
                Origin::Exact(v) => Some(v.clone()),
                Origin::Any => None,
            }))
        };
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                header::RETRY_AFTER,
                header::LOCATION,
            ])
            .max_age(MAX_AGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_exact_scheme_host_port() {
        assert_eq!(parse_origin("*"), Ok(Origin::Any));
        assert!(matches!(
            parse_origin("https://app.example.com:8443"),
            Ok(Origin::Exact(_))
        ));
        for bad in [
            "app.example.com",
            "https://",
            "https://app.example.com/",
            "https://app.example.com/path",
            "ftp://x",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}
