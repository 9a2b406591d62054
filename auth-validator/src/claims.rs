//! The access token's claims.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Claims carried by an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// The issuer, for example `chat-auth`.
    pub iss: String,
    /// The audience, for example `chat`.
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// A unique token id.
    pub jti: String,
    /// The username at issue time (display only; authorise on `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Claims {
    /// How long until the token expires (zero once it has).
    pub fn remaining(&self) -> std::time::Duration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let left = u64::try_from(self.exp).unwrap_or(0).saturating_sub(now);
        // Far enough for any real token, and never an overflow.
        std::time::Duration::from_secs(left.min(10 * 365 * 86_400))
    }
}
