use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{error_code, spawn, spawn_with, Backend};

crate::on_both_backends!(
    register_returns_the_new_user,
    invalid_registrations_get_field_errors,
    bad_bodies_get_json_errors,
    duplicate_usernames_conflict_ignoring_case,
    concurrent_registrations_of_one_name_yield_one_user,
    search_paginates_without_skipping_or_repeating,
    search_rejects_bad_parameters,
    me_and_user_by_id,
);

async fn register_returns_the_new_user(backend: Backend) {
    let app = spawn(backend).await;
    let r = app
        .post(
            "/users",
            &json!({"username": " Alice ", "password": "password123", "email": "a@example.com"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let user: Value = r.json().await.expect("json");
    assert_eq!(user["username"], "Alice");
    assert_eq!(user["email"], "a@example.com");
    assert!(uuid::Uuid::parse_str(user["id"].as_str().expect("id")).is_ok());
    assert!(user.get("password_hash").is_none() && user.get("password").is_none());
}

async fn invalid_registrations_get_field_errors(backend: Backend) {
    let app = spawn(backend).await;
    let r = app
        .post(
            "/users",
            &json!({"username": "a", "password": "short", "email": "nope"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "validation_failed");
    let fields = &body["error"]["details"]["fields"];
    for f in ["username", "password", "email"] {
        assert!(fields[f].is_string(), "no error for {f}: {body}");
    }
    let too_long = "p".repeat(129);
    let r = app.register("bob", &too_long).await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "validation_failed"
    );
    let r = app.register("bob!", "password123").await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "validation_failed"
    );
    // Nothing was half-written: the valid name is still free.
    assert_eq!(
        app.register("bob", "password123").await.status(),
        StatusCode::CREATED
    );
}

async fn bad_bodies_get_json_errors(backend: Backend) {
    let app = spawn(backend).await;
    let url = app.url("/users");
    let r = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .expect("send");
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "malformed_json"
    );
    let r = app
        .client
        .post(&url)
        .body(r#"{"username":"x","password":"y"}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(
        error_code(r, StatusCode::UNSUPPORTED_MEDIA_TYPE).await,
        "unsupported_media_type"
    );
    let r = app.post("/users", &json!({"username": "carol"})).await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_body"
    );
    let r = app
        .post("/users", &json!({"username": 5, "password": "password123"}))
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_body"
    );
    let huge = json!({"username": "carol", "password": "x".repeat(200_000)});
    let r = app.post("/users", &huge).await;
    assert_eq!(
        error_code(r, StatusCode::PAYLOAD_TOO_LARGE).await,
        "body_too_large"
    );
}

async fn duplicate_usernames_conflict_ignoring_case(backend: Backend) {
    let app = spawn(backend).await;
    assert_eq!(
        app.register("Dave", "password123").await.status(),
        StatusCode::CREATED
    );
    for name in ["Dave", "dave", "DAVE", " dave "] {
        let r = app.register(name, "another-password").await;
        assert_eq!(error_code(r, StatusCode::CONFLICT).await, "username_taken");
    }
    // The first owner's password is untouched.
    assert_eq!(
        app.login("dave", "password123").await.status(),
        StatusCode::OK
    );
}

async fn concurrent_registrations_of_one_name_yield_one_user(backend: Backend) {
    let app = spawn(backend).await;
    let attempts = (0..8).map(|i| {
        let name = if i % 2 == 0 { "Erin" } else { "erin" };
        app.register(name, "password123")
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.status())
        .collect();
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let conflicts = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((created, conflicts), (1, 7), "{statuses:?}");
}

async fn search_paginates_without_skipping_or_repeating(backend: Backend) {
    // Its two dozen users all register from one address.
    let app = spawn_with(backend, |c| {
        c.security.registrations_per_address_per_hour =
            std::num::NonZeroU32::new(100).expect("positive");
    })
    .await;
    let caller = app.signed_up("zed").await;
    let token = caller["access_token"].as_str().expect("token");
    // Names chosen so byte order, case and the allowed punctuation matter.
    let mut expected = Vec::new();
    for i in 0..23 {
        let name = match i % 4 {
            0 => format!("Pg{i:02}"),
            1 => format!("pg.{i:02}"),
            2 => format!("pg-{i:02}"),
            _ => format!("pg_{i:02}"),
        };
        assert_eq!(
            app.register(&name, "password123").await.status(),
            StatusCode::CREATED
        );
        expected.push(name);
    }
    for other in ["pf", "ph", "p", "apg"] {
        assert_eq!(
            app.register(&format!("{other}xx"), "password123")
                .await
                .status(),
            StatusCode::CREATED
        );
    }
    expected.sort_by_key(|n| n.to_ascii_lowercase());

    for limit in 1..=8 {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let mut path = format!("/users?query=PG&limit={limit}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page: Value = app
                .get(&path, Some(token))
                .await
                .json()
                .await
                .expect("json");
            let users = page["users"].as_array().expect("users");
            assert!(users.len() <= limit);
            for u in users {
                assert!(u.get("email").is_none(), "search leaks private fields: {u}");
                seen.push(u["username"].as_str().expect("name").to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, expected, "limit {limit}");
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len());
    }

    let all: Value = app
        .get("/users?limit=100", Some(token))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(all["users"].as_array().expect("users").len(), 23 + 4 + 1);
    assert!(all["next_cursor"].is_null());
}

async fn search_rejects_bad_parameters(backend: Backend) {
    let app = spawn(backend).await;
    let caller = app.signed_up("yan").await;
    let token = caller["access_token"].as_str();
    for (path, code) in [
        ("/users?limit=0", "invalid_limit"),
        ("/users?limit=101", "invalid_limit"),
        ("/users?limit=ten", "invalid_query"),
        ("/users?cursor=%%%", "invalid_cursor"),
        ("/users?cursor=!!notbase64", "invalid_cursor"),
        ("/users?query=a%25", "invalid_query"),
    ] {
        assert_eq!(
            error_code(app.get(path, token).await, StatusCode::BAD_REQUEST).await,
            code,
            "{path}"
        );
    }
    let r = app.get("/users?query=y", None).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "unauthenticated"
    );
}

async fn me_and_user_by_id(backend: Backend) {
    let app = spawn(backend).await;
    let alice = app.signed_up("alice").await;
    let bob = app.signed_up("bob").await;
    let token = alice["access_token"].as_str();
    let me: Value = app
        .get("/users/me", token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["id"], alice["user"]["id"]);
    assert_eq!(me["username"], "alice");

    let bob_id = bob["user"]["id"].as_str().expect("id");
    let r = app.get(&format!("/users/{bob_id}"), token).await;
    assert_eq!(r.status(), StatusCode::OK);
    let profile: Value = r.json().await.expect("json");
    assert_eq!(profile["username"], "bob");
    assert!(profile.get("email").is_none());

    let unknown = uuid::Uuid::new_v4();
    let r = app.get(&format!("/users/{unknown}"), token).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = app.get("/users/not-a-uuid", token).await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_id");
    for path in ["/users/me".to_owned(), format!("/users/{bob_id}")] {
        assert_eq!(
            app.get(&path, None).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            app.get(&path, Some("garbage")).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}
