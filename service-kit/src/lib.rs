//! HTTP plumbing shared by every service of the chat backend.
//!
//! Each service owns its routes and its error enum; what they have in common
//! lives here so it is written once:
//!
//! - [`config`]: configurations built from defaults alone, never from the
//!   environment;
//! - [`cors`]: which browser origins may call the API;
//! - [`error`]: the JSON error body `{"error": {"code", "message"}}` and the
//!   [`ApiError`] every service error converts into;
//! - [`extract`]: JSON, query and path extractors whose rejections use that
//!   same error body;
//! - [`metrics`]: the Prometheus recorder, an HTTP metrics middleware and the
//!   `/metrics` handler;
//! - [`openapi`]: what every OpenAPI document has in common (the bearer
//!   scheme, error bodies) and merging them;
//! - [`probes`]: `/healthz`, `/readyz` and `/metrics` on one router;
//! - [`server`]: binding a listener and serving a router until shutdown;
//! - [`layers`]: request ids, tracing, timeouts, body limits and panic capture;
//! - [`telemetry`]: `tracing` subscriber set-up;
//! - [`shutdown`]: the SIGTERM / Ctrl-C future used for graceful shutdown.

pub mod config;
pub mod cors;
pub mod error;
pub mod extract;
pub mod layers;
pub mod metrics;
pub mod openapi;
pub mod probes;
mod raw_errors;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use error::ApiError;
pub use extract::{Json, Path, Query};
