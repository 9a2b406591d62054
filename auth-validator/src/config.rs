//! Command-line / environment settings for services that *check* tokens
//! (chat-service, aggregator), so they all take the same flags.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretSlice, SecretString};

use crate::{KeyError, Verifier, VerifierSettings};

/// Where a validating service gets its key. Exactly one source is used, in
/// this order: `--jwks-url`, `--jwt-public-key[-file]`, `--jwt-secret[-file]`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifierConfig {
    /// JWKS URL of auth-service (`http://auth:8081/.well-known/jwks.json`):
    /// EdDSA, keys fetched and cached.
    #[arg(long, env = "JWKS_URL")]
    pub jwks_url: Option<String>,

    /// Ed25519 public key, SPKI PEM text: EdDSA.
    #[arg(
        long,
        env = "JWT_PUBLIC_KEY",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub jwt_public_key: Option<String>,

    /// File holding the Ed25519 public key PEM: EdDSA.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// HS256 shared secret (at least 32 bytes), the same as auth-service's.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,

    /// File holding the HS256 shared secret (surrounding whitespace ignored).
    #[arg(long, env = "JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Expected `iss`.
    #[arg(long, env = "JWT_ISSUER", default_value = "chat-auth")]
    pub jwt_issuer: String,

    /// Expected `aud`.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "chat")]
    pub jwt_audience: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no token key configured: give --jwks-url, --jwt-public-key[-file] or --jwt-secret[-file]"
    )]
    NoKey,
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error(
        "no token key configured and {} does not exist: start auth-service on the same \
         --data-dir first, or give --jwt-secret / --jwt-public-key / --jwks-url",
        .0.display()
    )]
    NoSharedSecret(PathBuf),
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl VerifierConfig {
    pub fn settings(&self) -> VerifierSettings {
        VerifierSettings::new(&self.jwt_issuer, &self.jwt_audience)
    }

    /// Whether any key source is configured.
    pub fn has_key(&self) -> bool {
        self.jwks_url.is_some()
            || self.jwt_public_key.is_some()
            || self.jwt_public_key_file.is_some()
            || self.jwt_secret.is_some()
            || self.jwt_secret_file.is_some()
    }

    /// The HS256 secret file auth-service writes into its data directory
    /// when no key is configured (the embedded mode).
    pub const SHARED_SECRET_FILE: &'static str = "jwt-secret";

    /// [`Self::build`], falling back, when no key is configured, to the
    /// secret auth-service keeps in the shared `data_dir`
    /// ([`Self::SHARED_SECRET_FILE`]).
    pub fn build_or_shared_secret(
        &self,
        data_dir: &std::path::Path,
        http: reqwest::Client,
    ) -> Result<Verifier, ConfigError> {
        if self.has_key() {
            return self.build(http);
        }
        let secret = data_dir.join(Self::SHARED_SECRET_FILE);
        if !secret.exists() {
            return Err(ConfigError::NoSharedSecret(secret));
        }
        let mut config = self.clone();
        config.jwt_secret_file = Some(secret);
        config.build(http)
    }

    /// Builds the verifier from the first configured key source.
    pub fn build(&self, http: reqwest::Client) -> Result<Verifier, ConfigError> {
        let settings = self.settings();
        let read =
            |path: &PathBuf| std::fs::read(path).map_err(|e| ConfigError::Read(path.clone(), e));
        if let Some(url) = &self.jwks_url {
            return Ok(Verifier::ed25519_jwks(url, &settings, http)?);
        }
        if let Some(pem) = &self.jwt_public_key {
            return Ok(Verifier::ed25519_pem(pem.as_bytes(), &settings)?);
        }
        if let Some(path) = &self.jwt_public_key_file {
            return Ok(Verifier::ed25519_pem(&read(path)?, &settings)?);
        }
        let secret: Vec<u8> = if let Some(secret) = &self.jwt_secret {
            secret.expose_secret().as_bytes().to_vec()
        } else if let Some(path) = &self.jwt_secret_file {
            let text = read(path)?;
            String::from_utf8_lossy(&text).trim().as_bytes().to_vec()
        } else {
            return Err(ConfigError::NoKey);
        };
        Ok(Verifier::hs256(&SecretSlice::from(secret), &settings)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        verifier: VerifierConfig,
    }

    fn parse(args: &[&str]) -> VerifierConfig {
        Cli::parse_from(std::iter::once("test").chain(args.iter().copied())).verifier
    }

    #[test]
    fn picks_the_configured_source() {
        let secret = "s".repeat(32);
        let v = parse(&["--jwt-secret", &secret])
            .build(reqwest::Client::new())
            .expect("hs");
        assert_eq!(v.algorithm(), jsonwebtoken::Algorithm::HS256);

        let dir = std::env::temp_dir().join(format!("verifier-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("secret");
        std::fs::write(&file, format!("{secret}\n")).expect("write");
        let v = parse(&["--jwt-secret-file", file.to_str().expect("utf8")])
            .build(reqwest::Client::new())
            .expect("hs from file");
        assert_eq!(v.algorithm(), jsonwebtoken::Algorithm::HS256);

        let pem = crate::ed25519_public_key_pem(&[9u8; 32]);
        let v = parse(&["--jwt-public-key", &pem])
            .build(reqwest::Client::new())
            .expect("ed");
        assert_eq!(v.algorithm(), jsonwebtoken::Algorithm::EdDSA);

        let v = parse(&[
            "--jwks-url",
            "http://127.0.0.1:1/jwks.json",
            "--jwt-secret",
            &secret,
        ])
        .build(reqwest::Client::new())
        .expect("jwks wins");
        assert_eq!(v.algorithm(), jsonwebtoken::Algorithm::EdDSA);
    }

    #[test]
    fn missing_or_weak_keys_are_errors() {
        assert!(matches!(
            parse(&[]).build(reqwest::Client::new()),
            Err(ConfigError::NoKey)
        ));
        assert!(parse(&["--jwt-secret", "short"])
            .build(reqwest::Client::new())
            .is_err());
        assert!(parse(&["--jwt-secret-file", "/nonexistent/secret"])
            .build(reqwest::Client::new())
            .is_err());
    }
}
