//! Signing keys, access tokens, refresh tokens and the JWKS document.
//!
//! Access tokens are short-lived JWTs checked by `auth-validator`. Refresh
//! tokens are 256-bit random strings; only their SHA-256 is stored, so a
//! database leak does not leak usable tokens.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use auth_validator::{Claims, Verifier, VerifierSettings};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use ring::signature::{Ed25519KeyPair, KeyPair};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::{SigningAlgorithm, TokenConfig};

pub const SECRET_FILE: &str = auth_validator::VerifierConfig::SHARED_SECRET_FILE;
pub const PRIVATE_KEY_FILE: &str = "jwt-ed25519.pem";
pub const PUBLIC_KEY_FILE: &str = "jwt-ed25519.pub.pem";

/// Issues access tokens and knows how to check them.
pub struct Tokens {
    encoding: EncodingKey,
    header: Header,
    issuer: String,
    audience: String,
    access_ttl: Duration,
    pub refresh_ttl: Duration,
    verifier: Verifier,
    jwks: Option<serde_json::Value>,
}

impl Tokens {
    /// Loads (or, in the data directory, generates) the signing key.
    pub fn from_config(config: &TokenConfig, data_dir: &Path) -> anyhow::Result<Self> {
        let settings = VerifierSettings::new(&config.jwt_issuer, &config.jwt_audience);
        let (encoding, header, verifier, jwks) = match config.jwt_algorithm {
            SigningAlgorithm::Hs256 => {
                let secret = match &config.jwt_secret {
                    Some(s) => s.clone(),
                    None => load_or_create_secret(&data_dir.join(SECRET_FILE))?,
                };
                let bytes: SecretSlice<u8> = secret.expose_secret().as_bytes().to_vec().into();
                let verifier = Verifier::hs256(&bytes, &settings)?;
                let encoding = EncodingKey::from_secret(bytes.expose_secret());
                (encoding, Header::new(Algorithm::HS256), verifier, None)
            }
            SigningAlgorithm::Eddsa => {
                let path = config
                    .jwt_private_key_file
                    .clone()
                    .unwrap_or_else(|| data_dir.join(PRIVATE_KEY_FILE));
                let key = load_or_create_ed25519(&path)?;
                let encoding = EncodingKey::from_ed_der(&key.pkcs8);
                let kid = key_id(&key.public);
                let mut header = Header::new(Algorithm::EdDSA);
                header.kid = Some(kid.clone());
                let verifier = Verifier::ed25519_pem(key.public_pem.as_bytes(), &settings)?;
                let jwks = serde_json::json!({ "keys": [{
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(&key.public),
                    "kid": kid,
                    "alg": "EdDSA",
                    "use": "sig",
                }]});
                (encoding, header, verifier, Some(jwks))
            }
        };
        Ok(Self {
            encoding,
            header,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            access_ttl: Duration::from_secs(config.access_token_ttl_secs.get()),
            refresh_ttl: Duration::from_secs(config.refresh_token_ttl_secs.get()),
            verifier,
            jwks,
        })
    }

    /// A signed access token for the user, and its lifetime in seconds.
    pub fn issue_access(&self, user_id: Uuid, username: &str) -> anyhow::Result<(String, u64)> {
        let now = unix_now();
        let claims = Claims {
            sub: user_id,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            nbf: Some(now),
            exp: now + self.access_ttl.as_secs() as i64,
            jti: Uuid::new_v4().to_string(),
            name: Some(username.to_owned()),
        };
        let token = jsonwebtoken::encode(&self.header, &claims, &self.encoding)?;
        Ok((token, self.access_ttl.as_secs()))
    }

    /// A verifier for this service's own tokens (the same one other services
    /// build from the shared secret, the public key or the JWKS URL).
    pub fn verifier(&self) -> Verifier {
        self.verifier.clone()
    }

    /// The JWKS document, in asymmetric mode only.
    pub fn jwks(&self) -> Option<&serde_json::Value> {
        self.jwks.as_ref()
    }
}

/// A new refresh token and the hash to store for it.
pub fn new_refresh_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_refresh_token(&token);
    (token, hash)
}

pub fn hash_refresh_token(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A stable key id: the first 16 characters of the public key's SHA-256.
fn key_id(public: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(public))[..16].to_owned()
}

/// Reads the secret file, or creates it with 48 random bytes (base64url,
/// 64 characters) readable by the owner only. The secret's bytes are the
/// file's text, so the same text works as `JWT_SECRET` for other services.
fn load_or_create_secret(path: &Path) -> anyhow::Result<SecretString> {
    let mut bytes = [0u8; 48];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let fresh = URL_SAFE_NO_PAD.encode(bytes);
    let text = read_or_create(path, fresh.as_bytes())?;
    let text = String::from_utf8(text).context("secret file is not UTF-8")?;
    Ok(SecretString::from(text.trim().to_owned()))
}

struct Ed25519Key {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    public_pem: String,
}

fn load_or_create_ed25519(path: &Path) -> anyhow::Result<Ed25519Key> {
    let rng = ring::rand::SystemRandom::new();
    let generated = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
    let fresh = pem::encode(&pem::Pem::new("PRIVATE KEY", generated.as_ref().to_vec()));
    let text = read_or_create(path, fresh.as_bytes())?;
    let parsed = pem::parse(&text).with_context(|| format!("{} is not PEM", path.display()))?;
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(parsed.contents())
        .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 PKCS#8 key: {e}", path.display()))?;
    let public: [u8; 32] = pair
        .public_key()
        .as_ref()
        .try_into()
        .context("Ed25519 public key is not 32 bytes")?;
    let public_pem = auth_validator::ed25519_public_key_pem(&public);
    let public_path = public_path_for(path);
    if let Err(e) = std::fs::write(&public_path, &public_pem) {
        tracing::warn!(error = %e, path = %public_path.display(), "cannot write the public key");
    }
    Ok(Ed25519Key {
        pkcs8: parsed.contents().to_vec(),
        public: public.to_vec(),
        public_pem,
    })
}

fn public_path_for(private: &Path) -> PathBuf {
    if private.file_name().is_some_and(|n| n == PRIVATE_KEY_FILE) {
        private.with_file_name(PUBLIC_KEY_FILE)
    } else {
        let mut name = private.as_os_str().to_owned();
        name.push(".pub");
        PathBuf::from(name)
    }
}

/// Returns the file's contents, first creating it with `fresh` (mode 0600)
/// when it does not exist. `create_new` makes two processes starting at once
/// agree on one key.
fn read_or_create(path: &Path, fresh: &[u8]) -> anyhow::Result<Vec<u8>> {
    if let Some(dir) = path.parent() {
        embedded_db::private_dir(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(fresh)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated a new signing key");
            Ok(fresh.to_vec())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let (a, ha) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(hash_refresh_token(&a), ha);
        assert_ne!(ha, a);
    }

    #[test]
    fn generated_keys_are_kept_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create_secret(&dir.path().join(SECRET_FILE)).expect("secret");
        let again = load_or_create_secret(&dir.path().join(SECRET_FILE)).expect("secret");
        assert_eq!(first.expose_secret(), again.expose_secret());
        assert!(first.expose_secret().len() >= 32);

        let k1 = load_or_create_ed25519(&dir.path().join(PRIVATE_KEY_FILE)).expect("key");
        let k2 = load_or_create_ed25519(&dir.path().join(PRIVATE_KEY_FILE)).expect("key");
        assert_eq!(k1.public, k2.public);
        let written = std::fs::read_to_string(dir.path().join(PUBLIC_KEY_FILE)).expect("pub");
        assert_eq!(written, k1.public_pem);
    }
}
