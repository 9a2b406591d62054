use auth_validator::{Verifier, VerifierSettings};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{eddsa, error_code, spawn, spawn_with, start, Backend};

crate::on_both_backends!(
    refresh_rotates_and_reuse_revokes_the_family,
    logout_revokes_the_family,
    eddsa_tokens_verify_with_only_the_jwks,
    signing_keys_survive_a_restart,
);

async fn refresh(app: &crate::helpers::TestApp, token: &str) -> reqwest::Response {
    app.post("/token/refresh", &json!({ "refresh_token": token }))
        .await
}

async fn refresh_rotates_and_reuse_revokes_the_family(backend: Backend) {
    let app = spawn(backend).await;
    let login = app.signed_up("kim").await;
    let first = login["refresh_token"].as_str().expect("refresh");

    let r = refresh(&app, first).await;
    assert_eq!(r.status(), StatusCode::OK);
    let rotated: Value = r.json().await.expect("json");
    let second = rotated["refresh_token"].as_str().expect("refresh");
    assert_ne!(first, second);
    assert_eq!(rotated["user"]["username"], "kim");
    assert_eq!(
        app.get("/users/me", rotated["access_token"].as_str())
            .await
            .status(),
        StatusCode::OK
    );

    // A separate login is a separate family and must survive the revocation.
    let other: Value = app
        .login("kim", "password123")
        .await
        .json()
        .await
        .expect("json");
    let other_refresh = other["refresh_token"].as_str().expect("refresh");

    // Presenting the spent token again: refused, and the family is revoked.
    let r = refresh(&app, first).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_refresh_token"
    );
    let r = refresh(&app, second).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_refresh_token"
    );

    assert_eq!(refresh(&app, other_refresh).await.status(), StatusCode::OK);
    let r = refresh(&app, "made-up-token").await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_refresh_token"
    );
    let r = app.post("/token/refresh", &json!({})).await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_body"
    );
}

async fn logout_revokes_the_family(backend: Backend) {
    let app = spawn(backend).await;
    let login = app.signed_up("lee").await;
    let first = login["refresh_token"].as_str().expect("refresh");
    let rotated: Value = refresh(&app, first).await.json().await.expect("json");
    let second = rotated["refresh_token"].as_str().expect("refresh");

    let r = app
        .post("/logout", &json!({ "refresh_token": second }))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        refresh(&app, second).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Unknown tokens log out "successfully" too: nothing is revealed.
    let r = app
        .post("/logout", &json!({ "refresh_token": "unknown" }))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

async fn eddsa_tokens_verify_with_only_the_jwks(backend: Backend) {
    let app = spawn_with(backend, eddsa).await;
    let login = app.signed_up("mia").await;
    let token = login["access_token"].as_str().expect("token");
    let header: Value = {
        use base64::Engine;
        let raw = token.split('.').next().expect("header");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw)
            .expect("b64");
        serde_json::from_slice(&bytes).expect("json")
    };
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].is_string());

    let jwks: Value = app
        .get("/.well-known/jwks.json", None)
        .await
        .json()
        .await
        .expect("json");
    let key = &jwks["keys"][0];
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    assert!(
        key.get("d").is_none(),
        "the private key must never be published"
    );

    // A validator holding nothing but the JWKS URL accepts the token...
    let settings = VerifierSettings::new("chat-auth", "chat");
    let verifier = Verifier::ed25519_jwks(
        &app.url("/.well-known/jwks.json"),
        &settings,
        reqwest::Client::new(),
    )
    .expect("verifier");
    let claims = verifier.verify(token).await.expect("valid");
    assert_eq!(
        claims.sub.to_string(),
        login["user"]["id"].as_str().expect("id")
    );
    // ...and so does one holding the public key file written beside the key.
    let pem = std::fs::read(app.data_dir.path().join("jwt-ed25519.pub.pem")).expect("public key");
    let verifier = Verifier::ed25519_pem(&pem, &settings).expect("verifier");
    verifier.verify(token).await.expect("valid");

    // HS256 services publish no JWKS.
    let hs = spawn(Backend::Sqlite).await;
    let r = hs.get("/.well-known/jwks.json", None).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
}

async fn signing_keys_survive_a_restart(backend: Backend) {
    for tweak in [
        (|_: &mut auth_service::Config| {}) as fn(&mut auth_service::Config),
        eddsa,
    ] {
        let app = spawn_with(backend, tweak).await;
        let login = app.signed_up("nia").await;
        let (config, dir) = app.stop().await;
        let again = start(config, dir).await;
        let r = again.get("/users/me", login["access_token"].as_str()).await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "old access token refused after restart"
        );
        assert_eq!(
            again.login("nia", "password123").await.status(),
            StatusCode::OK
        );
    }
}
