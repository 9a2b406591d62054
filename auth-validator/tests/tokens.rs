//! Every way a token must be refused, and the ways it must be accepted,
//! through the real extractor in a real router.

use std::time::{SystemTime, UNIX_EPOCH};

use auth_validator::{ed25519_public_key_pem, AuthUser, Claims, Verifier, VerifierSettings};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use secrecy::SecretSlice;
use tower::ServiceExt;
use uuid::Uuid;

const SECRET: &[u8] = b"an-hs256-test-secret-of-at-least-32-bytes";
const ISS: &str = "chat-auth";
const AUD: &str = "chat";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn settings() -> VerifierSettings {
    VerifierSettings::new(ISS, AUD)
}

fn claims() -> Claims {
    Claims {
        sub: Uuid::new_v4(),
        iss: ISS.into(),
        aud: AUD.into(),
        exp: now() + 600,
        iat: now(),
        nbf: None,
        jti: Uuid::new_v4().to_string(),
        name: Some("alice".into()),
    }
}

fn hs_verifier() -> Verifier {
    Verifier::hs256(&SecretSlice::from(SECRET.to_vec()), &settings()).expect("verifier")
}

fn hs_token(claims: &impl serde::Serialize, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("encode")
}

struct EdKey {
    pkcs8: Vec<u8>,
    public: [u8; 32],
}

fn ed_key() -> EdKey {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pair");
    let public = pair.public_key().as_ref().try_into().expect("32 bytes");
    EdKey {
        pkcs8: pkcs8.as_ref().to_vec(),
        public,
    }
}

fn ed_token(claims: &Claims, key: &EdKey, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&key.pkcs8)).expect("encode")
}

fn app(verifier: Verifier) -> Router {
    Router::new()
        .route(
            "/me",
            get(|user: AuthUser| async move { user.id.to_string() }),
        )
        .with_state(verifier)
}

/// Sends `authorization` (if any) and returns status, challenge and body.
async fn call(
    verifier: &Verifier,
    authorization: Option<&str>,
) -> (StatusCode, Option<String>, String) {
    let mut req = Request::get("/me");
    if let Some(value) = authorization {
        req = req.header(header::AUTHORIZATION, value);
    }
    let resp = app(verifier.clone())
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let challenge = resp
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().expect("ascii").to_owned());
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        challenge,
        String::from_utf8(body.to_vec()).expect("utf8"),
    )
}

/// Asserts a 401 with a `WWW-Authenticate: Bearer …` challenge and the JSON
/// error body, and returns the error code.
async fn assert_rejected(verifier: &Verifier, token: &str) -> String {
    let (status, challenge, body) = call(verifier, Some(&format!("Bearer {token}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{token} accepted: {body}");
    let challenge = challenge.expect("WWW-Authenticate header");
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
    json["error"]["code"].as_str().expect("code").to_owned()
}

fn b64(json: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).expect("json"))
}

#[tokio::test]
async fn a_valid_hs256_token_is_accepted() {
    let c = claims();
    let (status, _, body) = call(
        &hs_verifier(),
        Some(&format!("Bearer {}", hs_token(&c, SECRET))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, c.sub.to_string());
}

#[tokio::test]
async fn a_missing_token_gets_a_bare_challenge() {
    let (status, challenge, body) = call(&hs_verifier(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="chat""#));
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["error"]["code"], "unauthenticated");
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let header = b64(&serde_json::json!({"alg": "none", "typ": "JWT"}));
    let payload = b64(&serde_json::to_value(claims()).expect("claims"));
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        assert_rejected(&hs_verifier(), &token).await;
    }
    // "None" spelled other ways is no better.
    let header = b64(&serde_json::json!({"alg": "NONE"}));
    assert_rejected(&hs_verifier(), &format!("{header}.{payload}.")).await;
}

/// An HS256 token with this exact header (whatever it says) over fresh
/// claims, signed with the test secret.
fn hs_token_with_header(header: &serde_json::Value) -> String {
    let payload = b64(&serde_json::to_value(claims()).expect("claims"));
    let signing_input = format!("{}.{payload}", b64(header));
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .expect("sign");
    format!("{signing_input}.{signature}")
}

/// RFC 7515 §4.1.11: a `crit` header names extensions the recipient must
/// understand; this verifier understands none, so such a token is refused
/// even with a valid signature.
#[tokio::test]
async fn a_critical_header_extension_is_refused() {
    let token = hs_token_with_header(
        &serde_json::json!({"alg": "HS256", "typ": "JWT", "crit": ["exp-ext"], "exp-ext": 1}),
    );
    assert_eq!(
        assert_rejected(&hs_verifier(), &token).await,
        "invalid_token"
    );
    // The same token without `crit` is accepted: the signature is sound.
    let token = hs_token_with_header(&serde_json::json!({"alg": "HS256", "typ": "JWT"}));
    let (status, _, body) = call(&hs_verifier(), Some(&format!("Bearer {token}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn hs_key_confusion_against_an_asymmetric_verifier_is_rejected() {
    // The classic attack: sign HS256 with the *public* key as the secret.
    let key = ed_key();
    let pem = ed25519_public_key_pem(&key.public);
    let verifier = Verifier::ed25519_pem(pem.as_bytes(), &settings()).expect("verifier");
    let forged = hs_token(&claims(), pem.as_bytes());
    assert_rejected(&verifier, &forged).await;
    let forged_raw = hs_token(&claims(), &key.public);
    assert_rejected(&verifier, &forged_raw).await;
}

#[tokio::test]
async fn an_asymmetric_token_against_an_hs_verifier_is_rejected() {
    let key = ed_key();
    assert_rejected(&hs_verifier(), &ed_token(&claims(), &key, None)).await;
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_rejected() {
    let other = b"another-secret-that-is-also-32-bytes-long!";
    assert_rejected(&hs_verifier(), &hs_token(&claims(), other)).await;

    let key = ed_key();
    let verifier =
        Verifier::ed25519_pem(ed25519_public_key_pem(&key.public).as_bytes(), &settings())
            .expect("v");
    assert_rejected(&verifier, &ed_token(&claims(), &ed_key(), None)).await;
}

#[tokio::test]
async fn a_tampered_payload_is_rejected() {
    let token = hs_token(&claims(), SECRET);
    let parts: Vec<&str> = token.split('.').collect();
    let mut evil = claims();
    evil.sub = Uuid::new_v4();
    let payload = b64(&serde_json::to_value(evil).expect("claims"));
    assert_rejected(
        &hs_verifier(),
        &format!("{}.{payload}.{}", parts[0], parts[2]),
    )
    .await;
}

#[tokio::test]
async fn an_expired_token_is_rejected_with_little_leeway() {
    let mut c = claims();
    c.exp = now() - 30;
    let code = assert_rejected(&hs_verifier(), &hs_token(&c, SECRET)).await;
    assert_eq!(code, "token_expired");
    // Within the 5 s leeway it still passes.
    c.exp = now() - 2;
    let (status, _, _) = call(
        &hs_verifier(),
        Some(&format!("Bearer {}", hs_token(&c, SECRET))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_token_not_yet_valid_is_rejected() {
    let mut c = claims();
    c.nbf = Some(now() + 120);
    assert_rejected(&hs_verifier(), &hs_token(&c, SECRET)).await;
}

#[tokio::test]
async fn wrong_issuer_or_audience_is_rejected() {
    let mut c = claims();
    c.iss = "someone-else".into();
    assert_rejected(&hs_verifier(), &hs_token(&c, SECRET)).await;
    let mut c = claims();
    c.aud = "another-app".into();
    assert_rejected(&hs_verifier(), &hs_token(&c, SECRET)).await;
}

#[tokio::test]
async fn missing_required_claims_are_rejected() {
    let full = serde_json::to_value(claims()).expect("claims");
    for missing in ["exp", "iss", "aud", "sub"] {
        let mut c = full.clone();
        c.as_object_mut().expect("object").remove(missing);
        assert_rejected(&hs_verifier(), &hs_token(&c, SECRET)).await;
    }
    let mut c = full;
    c["sub"] = "not-a-uuid".into();
    assert_rejected(&hs_verifier(), &hs_token(&c, SECRET)).await;
}

#[tokio::test]
async fn malformed_tokens_and_headers_are_rejected() {
    for token in [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "....",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
    ] {
        let (status, challenge, body) =
            call(&hs_verifier(), Some(&format!("Bearer {token}"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        assert!(challenge.is_some());
        serde_json::from_str::<serde_json::Value>(&body).expect("JSON error");
    }
    let good = hs_token(&claims(), SECRET);
    for value in [
        good.clone(),
        format!("Basic {good}"),
        "Bearer".into(),
        "Bearer    ".into(),
    ] {
        let (status, _, _) = call(&hs_verifier(), Some(&value)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{value:?}");
    }
    // The scheme is case-insensitive (RFC 7235).
    let (status, _, _) = call(&hs_verifier(), Some(&format!("bearer {good}"))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn short_hs_secrets_are_refused() {
    let short = SecretSlice::from(vec![7u8; 31]);
    assert!(Verifier::hs256(&short, &settings()).is_err());
}

#[tokio::test]
async fn an_ed25519_token_is_accepted_with_only_the_public_key() {
    let key = ed_key();
    let pem = ed25519_public_key_pem(&key.public);
    let verifier = Verifier::ed25519_pem(pem.as_bytes(), &settings()).expect("verifier");
    let c = claims();
    let (status, _, body) = call(
        &verifier,
        Some(&format!("Bearer {}", ed_token(&c, &key, None))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, c.sub.to_string());
}

#[tokio::test]
async fn an_ed25519_token_is_accepted_with_keys_from_a_jwks_url() {
    let key = ed_key();
    let jwks = serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "k1",
        "x": URL_SAFE_NO_PAD.encode(key.public),
    }]});
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, server).await });

    let url = format!("http://{addr}/.well-known/jwks.json");
    let verifier = Verifier::ed25519_jwks(&url, &settings(), reqwest::Client::new()).expect("v");
    let c = claims();
    let (status, _, body) = call(
        &verifier,
        Some(&format!("Bearer {}", ed_token(&c, &key, Some("k1")))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Unknown kid, no kid, and a foreign key under a known kid: all refused.
    assert_rejected(&verifier, &ed_token(&c, &key, Some("k2"))).await;
    assert_rejected(&verifier, &ed_token(&c, &key, None)).await;
    assert_rejected(&verifier, &ed_token(&c, &ed_key(), Some("k1"))).await;
}

#[tokio::test]
async fn an_unreachable_jwks_url_is_a_503_not_a_401() {
    // Nothing listens on this port once the listener is dropped.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let url = format!("http://{addr}/.well-known/jwks.json");
    let verifier = Verifier::ed25519_jwks(&url, &settings(), reqwest::Client::new()).expect("v");
    let key = ed_key();
    let (status, _, body) = call(
        &verifier,
        Some(&format!("Bearer {}", ed_token(&claims(), &key, Some("k1")))),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}
