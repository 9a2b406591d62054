//! Key material and token checks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretSlice};
use tokio::sync::Mutex;

use crate::{Claims, MIN_HS256_SECRET_BYTES};

/// Clock leeway applied to `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;

/// How long a fetched JWKS document is trusted before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// Unknown `kid`s trigger a refetch at most this often, so garbage tokens
/// cannot turn the verifier into a request amplifier against auth-service.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);

/// The SPKI PEM (`-----BEGIN PUBLIC KEY-----`) of a raw 32-byte Ed25519
/// public key, the form [`Verifier::ed25519_pem`] reads.
pub fn ed25519_public_key_pem(raw: &[u8; 32]) -> String {
    // SubjectPublicKeyInfo for Ed25519 (RFC 8410): a fixed prefix, then the key.
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(raw);
    pem::encode(&pem::Pem::new("PUBLIC KEY", spki))
}

/// Who must have issued the token, and for whom.
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
}

impl VerifierSettings {
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

/// Key material that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes, got {0}")]
    SecretTooShort(usize),
    #[error("not an Ed25519 public key PEM: {0}")]
    BadPublicKey(String),
    #[error("invalid JWKS URL: {0}")]
    BadUrl(String),
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    #[error("signing keys are unavailable")]
    KeysUnavailable,
}

/// Checks access tokens. Cheap to clone; build one at start-up and share it.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    validation: Validation,
    keys: KeySource,
}

enum KeySource {
    Static(DecodingKey),
    Jwks(JwksCache),
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = match self.inner.keys {
            KeySource::Static(_) => "static",
            KeySource::Jwks(_) => "jwks",
        };
        f.debug_struct("Verifier")
            .field("algorithms", &self.inner.validation.algorithms)
            .field("keys", &keys)
            .finish()
    }
}

impl Verifier {
    /// HS256 with a shared secret (at least 32 bytes).
    pub fn hs256(secret: &SecretSlice<u8>, settings: &VerifierSettings) -> Result<Self, KeyError> {
        let bytes = secret.expose_secret();
        if bytes.len() < MIN_HS256_SECRET_BYTES {
            return Err(KeyError::SecretTooShort(bytes.len()));
        }
        Ok(Self::with(
            Algorithm::HS256,
            settings,
            KeySource::Static(DecodingKey::from_secret(bytes)),
        ))
    }

    /// EdDSA (Ed25519) with a public key in SPKI PEM form
    /// (`-----BEGIN PUBLIC KEY-----`).
    pub fn ed25519_pem(pem: &[u8], settings: &VerifierSettings) -> Result<Self, KeyError> {
        let key =
            DecodingKey::from_ed_pem(pem).map_err(|e| KeyError::BadPublicKey(e.to_string()))?;
        Ok(Self::with(
            Algorithm::EdDSA,
            settings,
            KeySource::Static(key),
        ))
    }

    /// EdDSA with keys taken from the issuer's JWKS document
    /// (`/.well-known/jwks.json`), fetched lazily and cached. Only Ed25519
    /// keys with a `kid` are used; tokens must name one of them.
    pub fn ed25519_jwks(
        url: &str,
        settings: &VerifierSettings,
        http: reqwest::Client,
    ) -> Result<Self, KeyError> {
        let url = reqwest::Url::parse(url).map_err(|e| KeyError::BadUrl(e.to_string()))?;
        Ok(Self::with(
            Algorithm::EdDSA,
            settings,
            KeySource::Jwks(JwksCache {
                url,
                http,
                state: Mutex::new(JwksState::default()),
            }),
        ))
    }

    fn with(algorithm: Algorithm, settings: &VerifierSettings, keys: KeySource) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = settings.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[settings.issuer.as_str()]);
        validation.set_audience(&[settings.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Self {
            inner: Arc::new(Inner { validation, keys }),
        }
    }

    /// The pinned algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.inner.validation.algorithms[0]
    }

    /// Checks `token` and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if has_critical_extensions(token) {
            // RFC 7515 §4.1.11: a recipient that does not understand an
            // extension listed in `crit` must refuse the token; this one
            // understands none.
            return Err(TokenError::Invalid("unsupported critical header"));
        }
        if header.alg != self.algorithm() {
            return Err(TokenError::Invalid("unexpected algorithm"));
        }
        match &self.inner.keys {
            KeySource::Static(key) => self.decode(token, key),
            KeySource::Jwks(cache) => {
                let kid = header.kid.ok_or(TokenError::Invalid("missing key id"))?;
                let key = cache.key(&kid).await?;
                self.decode(token, &key)
            }
        }
    }

    fn decode(&self, token: &str, key: &DecodingKey) -> Result<Claims, TokenError> {
        use jsonwebtoken::errors::ErrorKind as K;
        jsonwebtoken::decode::<Claims>(token, key, &self.inner.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::InvalidSignature => TokenError::Invalid("bad signature"),
                K::InvalidAlgorithm | K::InvalidAlgorithmName => {
                    TokenError::Invalid("unexpected algorithm")
                }
                K::InvalidIssuer => TokenError::Invalid("wrong issuer"),
                K::InvalidAudience => TokenError::Invalid("wrong audience"),
                K::ImmatureSignature => TokenError::Invalid("not yet valid"),
                K::MissingRequiredClaim(_) => TokenError::Invalid("missing required claim"),
                K::Json(_) | K::Utf8(_) | K::Base64(_) | K::InvalidToken => TokenError::Malformed,
                _ => TokenError::Invalid("rejected"),
            })
    }
}

struct JwksCache {
    url: reqwest::Url,
    http: reqwest::Client,
    state: Mutex<JwksState>,
}

#[derive(Default)]
struct JwksState {
    keys: HashMap<String, Arc<DecodingKey>>,
    fetched_at: Option<Instant>,
}

impl JwksCache {
    async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, TokenError> {
        // One lock for lookup and refresh: concurrent misses wait for a single
        // fetch instead of each starting their own.
        let mut state = self.state.lock().await;
        let fresh = state.fetched_at.is_some_and(|t| t.elapsed() < JWKS_TTL);
        if fresh {
            if let Some(key) = state.keys.get(kid) {
                return Ok(key.clone());
            }
        }
        let may_refetch = state
            .fetched_at
            .is_none_or(|t| t.elapsed() >= JWKS_MIN_REFETCH);
        if may_refetch {
            match self.fetch().await {
                Ok(keys) => {
                    state.keys = keys;
                    state.fetched_at = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, url = %self.url, "cannot fetch JWKS");
                    // Keep serving the keys we have if the issuer is down.
                    return state
                        .keys
                        .get(kid)
                        .cloned()
                        .ok_or(TokenError::KeysUnavailable);
                }
            }
        }
        state
            .keys
            .get(kid)
            .cloned()
            .ok_or(TokenError::Invalid("unknown key id"))
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<DecodingKey>>, reqwest::Error> {
        let set: JwkSet = self
            .http
            .get(self.url.clone())
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let is_ed25519 = matches!(
                &jwk.algorithm,
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519
            );
            let (Some(kid), true) = (jwk.common.key_id.as_ref(), is_ed25519) else {
                continue;
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid.clone(), Arc::new(key));
                }
                Err(e) => tracing::warn!(error = %e, kid, "skipping unusable JWK"),
            }
        }
        Ok(keys)
    }
}

/// Whether the token's header has a `crit` member (whatever it lists).
fn has_critical_extensions(token: &str) -> bool {
    use base64::Engine as _;
    let Some(header) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|h| h.get("crit").is_some())
}
