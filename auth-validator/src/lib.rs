//! The one place that knows how an access token is checked.
//!
//! auth-service issues access tokens; every service that accepts them builds
//! a [`Verifier`] at start-up from injected key material and puts it in its
//! router state. Handlers then take an [`AuthUser`] argument, the axum
//! extractor that reads `Authorization: Bearer …` and rejects anything that
//! is not a valid token with 401, a `WWW-Authenticate` header and the JSON
//! error body.
//!
//! What is checked, always:
//! - the algorithm is pinned by the verifier's configuration: the token's
//!   `alg` header must be that algorithm, so `alg=none`, HS/RS-style key
//!   confusion and tokens of any other family are rejected;
//! - the signature, against the configured key (HS256 shared secret of at
//!   least 32 bytes; or an Ed25519 public key from a PEM, or from the issuer's
//!   JWKS document, fetched and cached);
//! - `exp`, `iss`, `aud` and `sub` are required; `exp`/`nbf` use
//!   [`DEFAULT_LEEWAY_SECS`] of clock leeway; `sub` must be a UUID.
//!
//! Layout: [`claims`] (the token body), [`verifier`] (keys and checks),
//! [`extractor`] (the axum side), [`tickets`] (single-use stream tickets
//! for browsers), [`config`] (the flags validating services
//! share: `--jwks-url`, `--jwt-public-key[-file]`, `--jwt-secret[-file]`).

pub mod claims;
pub mod config;
pub mod extractor;
pub mod tickets;
pub mod verifier;

pub use claims::Claims;
pub use config::VerifierConfig;
pub use extractor::{AuthUser, BearerToken};
pub use tickets::{StreamUser, TicketConfig, Tickets};
pub use verifier::{
    ed25519_public_key_pem, KeyError, TokenError, Verifier, VerifierSettings, DEFAULT_LEEWAY_SECS,
};

/// Minimum length of an HS256 shared secret, in bytes (RFC 7518 §3.2).
pub const MIN_HS256_SECRET_BYTES: usize = 32;
