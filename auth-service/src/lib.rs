//! auth-service: users, passwords, login and tokens.
//!
//! Layout:
//! - [`config`]: every setting, as a flag with an environment fallback;
//! - [`domain`]: validated input types (`Username`, `Password`, `Email`);
//! - [`store`]: users and refresh tokens in SQLite (embedded default) or
//!   PostgreSQL, through `sqlx`, with migrations run at start-up;
//! - [`passwords`]: argon2id hashing off the async runtime, with a cap on
//!   concurrent hashes;
//! - [`tokens`]: signing keys, access tokens, refresh tokens, JWKS;
//! - [`firebase`]: Firebase custom tokens for Firestore listeners;
//! - [`limiter`]: failed-login limits per account and per client address;
//! - [`routes`]: the HTTP API; [`startup`]: wiring and the server.
//!
//! Decisions the design left open are documented where they are made, and
//! summarised in the README.

pub mod config;
pub mod domain;
pub mod error;
pub mod firebase;
pub mod limiter;
pub mod passwords;
pub mod routes;
pub mod startup;
pub mod store;
pub mod tokens;

pub use config::Config;
pub use startup::AppState;
