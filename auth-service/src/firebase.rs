//! Firebase custom tokens, so a signed-in user can sign in to Firebase and
//! read their chats' Firestore documents under `firestore.rules`.
//!
//! A custom token is a JWT signed with a Google service account's private
//! key (RS256): `iss` and `sub` are the service account's e-mail, `aud` the
//! Identity Toolkit, `uid` our user id, and it lives at most one hour
//! (Firebase refuses longer ones). The client exchanges it with Firebase
//! Auth (`signInWithCustomToken`) for an ID token whose `uid` the rules see
//! as `request.auth.uid`.
//!
//! The key comes from a service account JSON key file
//! (`--firebase-service-account-file`) or the same JSON in the environment
//! (`FIREBASE_SERVICE_ACCOUNT_JSON`). Without one the route answers 501
//! `firebase_not_configured`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The audience Firebase Auth requires of custom tokens.
pub const AUDIENCE: &str =
    "https://identitytoolkit.googleapis.com/google.identity.identitytoolkit.v1.IdentityToolkit";
/// The longest lifetime Firebase accepts.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, clap::Args)]
pub struct FirebaseConfig {
    /// Google service account key (the JSON file the Cloud console
    /// downloads) used to sign Firebase custom tokens for
    /// `POST /token/firebase`. Without it (or the JSON in
    /// `FIREBASE_SERVICE_ACCOUNT_JSON`) that route answers 501.
    #[arg(long, env = "FIREBASE_SERVICE_ACCOUNT_FILE")]
    pub firebase_service_account_file: Option<PathBuf>,

    /// The service account key JSON itself, instead of a file.
    #[arg(long, env = "FIREBASE_SERVICE_ACCOUNT_JSON", hide_env_values = true)]
    pub firebase_service_account_json: Option<SecretString>,

    /// Lifetime of Firebase custom tokens, seconds (60–3600). The Firebase
    /// session that a client signs in to outlives it: Firebase refreshes its
    /// own ID tokens.
    #[arg(long, env = "FIREBASE_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub firebase_token_ttl_secs: u64,
}

/// The fields of a service account key that signing needs (read once at
/// start-up; the key then lives only inside the `EncodingKey`).
#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    private_key_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CustomTokenClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    pub uid: String,
}

/// Signs Firebase custom tokens with one service account's key.
pub struct FirebaseTokens {
    encoding: EncodingKey,
    header: Header,
    client_email: String,
    ttl: Duration,
}

impl std::fmt::Debug for FirebaseTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirebaseTokens")
            .field("client_email", &self.client_email)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl FirebaseTokens {
    /// From the configured key, if any.
    pub fn from_config(config: &FirebaseConfig) -> anyhow::Result<Option<Self>> {
        let ttl = Duration::from_secs(config.firebase_token_ttl_secs);
        anyhow::ensure!(
            (Duration::from_secs(60)..=MAX_TTL).contains(&ttl),
            "--firebase-token-ttl-secs must be 60 to 3600 (Firebase refuses longer custom tokens)"
        );
        let json = match (
            &config.firebase_service_account_file,
            &config.firebase_service_account_json,
        ) {
            (Some(_), Some(_)) => {
                anyhow::bail!("give the Firebase service account as a file or as JSON, not both")
            }
            (Some(path), None) => SecretString::from(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            ),
            (None, Some(json)) => json.clone(),
            (None, None) => return Ok(None),
        };
        Self::from_json(json.expose_secret(), ttl).map(Some)
    }

    /// From a service account key's JSON.
    pub fn from_json(json: &str, ttl: Duration) -> anyhow::Result<Self> {
        let account: ServiceAccount = serde_json::from_str(json)
            .context("the Firebase service account key is not a service account JSON key")?;
        anyhow::ensure!(
            account.client_email.contains('@'),
            "the Firebase service account key has no client_email"
        );
        let encoding = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .context("the Firebase service account's private_key is not an RSA key in PEM")?;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = account.private_key_id;
        Ok(Self {
            encoding,
            header,
            client_email: account.client_email,
            ttl: ttl.min(MAX_TTL),
        })
    }

    /// The claims of a token for `uid` issued at `now` (Unix seconds).
    pub fn claims(&self, uid: Uuid, now: u64) -> CustomTokenClaims {
        CustomTokenClaims {
            iss: self.client_email.clone(),
            sub: self.client_email.clone(),
            aud: AUDIENCE.to_owned(),
            iat: now,
            exp: now + self.ttl.as_secs(),
            uid: uid.to_string(),
        }
    }

    /// A signed custom token for `uid`, and its lifetime in seconds.
    pub fn mint(&self, uid: Uuid, now: u64) -> anyhow::Result<(String, u64)> {
        let token = jsonwebtoken::encode(&self.header, &self.claims(uid, now), &self.encoding)
            .context("signing a Firebase custom token")?;
        Ok((token, self.ttl.as_secs()))
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    /// A fresh RSA key pair: private PKCS#8 PEM, and the public key PEM.
    fn rsa_key_pair() -> (String, String) {
        let private = testkit::rsa_private_key_pem();
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, &private).expect("write key");
        let out = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .output()
            .expect("openssl pkey");
        (private, String::from_utf8(out.stdout).expect("pem"))
    }

    fn account_json(private_pem: &str) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": "demo-chat",
            "private_key_id": "key-1",
            "private_key": private_pem,
            "client_email": "chat@demo-chat.iam.gserviceaccount.com",
        })
        .to_string()
    }

    #[test]
    fn a_token_is_rs256_signed_by_the_service_account_for_the_user() {
        let (private, public) = rsa_key_pair();
        let tokens =
            FirebaseTokens::from_json(&account_json(&private), MAX_TTL).expect("service account");
        let uid = Uuid::new_v4();
        let now = jsonwebtoken::get_current_timestamp();
        let (token, expires_in) = tokens.mint(uid, now).expect("token");
        assert_eq!(expires_in, 3600);

        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some("key-1"));
        assert_eq!(header.typ.as_deref(), Some("JWT"));

        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&["chat@demo-chat.iam.gserviceaccount.com"]);
        let decoded = jsonwebtoken::decode::<CustomTokenClaims>(
            &token,
            &DecodingKey::from_rsa_pem(public.as_bytes()).expect("public key"),
            &validation,
        )
        .expect("signature and claims check out");
        assert_eq!(
            decoded.claims,
            CustomTokenClaims {
                iss: "chat@demo-chat.iam.gserviceaccount.com".into(),
                sub: "chat@demo-chat.iam.gserviceaccount.com".into(),
                aud: AUDIENCE.into(),
                iat: now,
                exp: now + 3600,
                uid: uid.to_string(),
            }
        );
    }

    #[test]
    fn another_key_does_not_verify_it() {
        let (private, _) = rsa_key_pair();
        let (_, other_public) = rsa_key_pair();
        let tokens = FirebaseTokens::from_json(&account_json(&private), MAX_TTL).expect("account");
        let (token, _) = tokens
            .mint(Uuid::new_v4(), jsonwebtoken::get_current_timestamp())
            .expect("token");
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[AUDIENCE]);
        assert!(jsonwebtoken::decode::<CustomTokenClaims>(
            &token,
            &DecodingKey::from_rsa_pem(other_public.as_bytes()).expect("public key"),
            &validation,
        )
        .is_err());
    }

    #[test]
    fn lifetimes_and_keys_are_checked() {
        let (private, _) = rsa_key_pair();
        let config = |ttl| FirebaseConfig {
            firebase_service_account_file: None,
            firebase_service_account_json: Some(account_json(&private).into()),
            firebase_token_ttl_secs: ttl,
        };
        assert!(FirebaseTokens::from_config(&config(3601)).is_err());
        assert!(FirebaseTokens::from_config(&config(59)).is_err());
        let short = FirebaseTokens::from_config(&config(600))
            .expect("valid")
            .expect("configured");
        let claims = short.claims(Uuid::nil(), 1_000);
        assert_eq!(claims.exp - claims.iat, 600);

        let none = FirebaseConfig {
            firebase_service_account_file: None,
            firebase_service_account_json: None,
            firebase_token_ttl_secs: 3600,
        };
        assert!(FirebaseTokens::from_config(&none).expect("valid").is_none());
        assert!(FirebaseTokens::from_json("{}", MAX_TTL).is_err());
        let not_rsa =
            account_json("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        assert!(FirebaseTokens::from_json(&not_rsa, MAX_TTL).is_err());
    }
}
