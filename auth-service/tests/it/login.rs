use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{error_code, spawn, spawn_with, Backend};

crate::on_both_backends!(
    login_returns_working_tokens,
    unknown_user_and_wrong_password_look_the_same,
    failed_logins_per_account_trip_and_recover,
    failed_logins_per_address_trip,
    a_victim_logs_in_while_an_attacker_hammers_their_name,
    registrations_are_limited_per_address,
);

async fn login_returns_working_tokens(backend: Backend) {
    let app = spawn(backend).await;
    assert_eq!(
        app.register("Frank", "password123").await.status(),
        StatusCode::CREATED
    );
    // Usernames log in case-insensitively.
    let r = app.login("FRANK", "password123").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert!(body["refresh_token"]
        .as_str()
        .is_some_and(|t| t.len() >= 43));
    assert_eq!(body["user"]["username"], "Frank");
    let me = app.get("/users/me", body["access_token"].as_str()).await;
    assert_eq!(me.status(), StatusCode::OK);
    // A wrong password for an existing user fails.
    let r = app.login("frank", "password124").await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_credentials"
    );
}

async fn unknown_user_and_wrong_password_look_the_same(backend: Backend) {
    let app = spawn(backend).await;
    assert_eq!(
        app.register("grace", "password123").await.status(),
        StatusCode::CREATED
    );
    let a = app.login("grace", "wrong-password").await;
    let b = app.login("nobody", "wrong-password").await;
    let c = app.login("!!", "wrong-password").await;
    let headers = |r: &reqwest::Response| {
        let mut h: Vec<(String, String)> = r
            .headers()
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-request-id"))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        h.sort();
        h
    };
    let (sa, sb, sc) = (a.status(), b.status(), c.status());
    let (ha, hb, hc) = (headers(&a), headers(&b), headers(&c));
    let (ba, bb, bc) = (
        a.text().await.expect("a"),
        b.text().await.expect("b"),
        c.text().await.expect("c"),
    );
    assert_eq!(sa, StatusCode::UNAUTHORIZED);
    assert_eq!((sa, &ha, &ba), (sb, &hb, &bb));
    assert_eq!((sa, &ha, &ba), (sc, &hc, &bc));
}

async fn failed_logins_per_account_trip_and_recover(backend: Backend) {
    let app = spawn_with(backend, |c| {
        c.security.login_max_failures_per_account = NonZeroU32::new(3).expect("positive");
        c.security.login_failure_window_secs = NonZeroU64::new(2).expect("positive");
    })
    .await;
    assert_eq!(
        app.register("heidi", "password123").await.status(),
        StatusCode::CREATED
    );
    for _ in 0..3 {
        assert_eq!(
            app.login("heidi", "bad-password").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Tripped: even the right password is refused, with Retry-After.
    let r = app.login("HEIDI", "password123").await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(
        error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
    // Other accounts are unaffected.
    assert_eq!(
        app.login("ivan", "bad-password").await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Recovers when the window ends.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        app.login("heidi", "password123").await.status(),
        StatusCode::OK
    );
}

async fn failed_logins_per_address_trip(backend: Backend) {
    let app = spawn_with(backend, |c| {
        c.security.login_max_failures_per_address = NonZeroU32::new(4).expect("positive");
    })
    .await;
    assert_eq!(
        app.register("judy", "password123").await.status(),
        StatusCode::CREATED
    );
    for i in 0..4 {
        let r = app.login(&format!("user{i}"), "bad-password").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = app.login("judy", "password123").await;
    assert_eq!(
        error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
}

/// `POST /login` from `address` (through the configured proxy header).
async fn login_from(
    app: &crate::helpers::TestApp,
    address: &str,
    username: &str,
    password: &str,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url("/login"))
        .header("x-forwarded-for", address)
        .json(&serde_json::json!({"username": username, "password": password}))
        .send()
        .await
        .expect("login")
}

async fn a_victim_logs_in_while_an_attacker_hammers_their_name(backend: Backend) {
    let app = spawn_with(backend, |c| {
        c.security.client_ip_header = Some("x-forwarded-for".into());
        c.security.login_max_failures_per_account = NonZeroU32::new(10).expect("positive");
    })
    .await;
    assert_eq!(
        app.register("victim", "password123").await.status(),
        StatusCode::CREATED
    );
    let home = "203.0.113.7";
    assert_eq!(
        login_from(&app, home, "victim", "password123")
            .await
            .status(),
        StatusCode::OK
    );
    // One attacker address locks only itself, after 5 failures: even the
    // right password is refused from there.
    for _ in 0..5 {
        let r = login_from(&app, "198.51.100.1", "victim", "guess").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = login_from(&app, "198.51.100.1", "victim", "password123").await;
    assert_eq!(
        error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
    // Many attacker addresses: the account-wide ceiling (10 here) holds.
    let mut failures = 5;
    for i in 2..40 {
        let r = login_from(&app, &format!("198.51.100.{i}"), "victim", "guess").await;
        match r.status() {
            StatusCode::UNAUTHORIZED => failures += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(failures, 10, "guesses the account allows per window");
    // The victim, from their usual address, is not locked out.
    assert_eq!(
        login_from(&app, home, "victim", "password123")
            .await
            .status(),
        StatusCode::OK
    );
}

async fn registrations_are_limited_per_address(backend: Backend) {
    let app = spawn_with(backend, |c| {
        c.security.client_ip_header = Some("x-forwarded-for".into());
        c.security.registrations_per_address_per_hour = NonZeroU32::new(3).expect("positive");
    })
    .await;
    let register_from = |address: &'static str, name: String| {
        let url = app.url("/users");
        async move {
            reqwest::Client::new()
                .post(url)
                .header("x-forwarded-for", address)
                .json(&serde_json::json!({"username": name, "password": "password123"}))
                .send()
                .await
                .expect("register")
        }
    };
    for i in 0..3 {
        let r = register_from("192.0.2.1", format!("many{i}")).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = register_from("192.0.2.1", "many3".into()).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
    let r = register_from("192.0.2.2", "other".into()).await;
    assert_eq!(r.status(), StatusCode::CREATED, "per address");
}
