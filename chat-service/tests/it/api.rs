use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{error_code, spawn, spawn_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_and_see_the_same_history() {
    let s = spawn().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);

    let r = s
        .post("/chats", Some(&alice), &json!({ "user_id": bob.id }))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let chat: Value = r.json().await.expect("json");
    assert_eq!(chat["other"]["username"], "bob");
    let id: Uuid = chat["id"].as_str().expect("id").parse().expect("uuid");
    // Asking again, from either side, gives the same chat.
    let r = s
        .post("/chats", Some(&alice), &json!({ "user_id": bob.id }))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .post("/chats", Some(&bob), &json!({ "user_id": alice.id }))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let again: Value = r.json().await.expect("json");
    assert_eq!(again["id"], chat["id"]);
    assert_eq!(again["other"]["username"], "alice");

    let mut sent = Vec::new();
    for (from, text) in [
        (&alice, "hi"),
        (&alice, "how are you?"),
        (&bob, "fine"),
        (&alice, "good"),
        (&bob, "bye"),
    ] {
        let m = s.sent(id, from, text).await;
        assert_eq!(m["sender_id"], json!(from.id));
        assert_eq!(m["chat_id"], json!(id));
        assert_eq!(m["text"], text);
        assert!(m["sent_at"].as_str().is_some_and(|t| t.ends_with('Z')));
        let mid: Uuid = m["id"].as_str().expect("id").parse().expect("uuid");
        assert_eq!(mid.get_version_num(), 1);
        sent.push(m);
    }
    for viewer in [&alice, &bob] {
        let page = s.history(id, viewer, "").await;
        let texts: Vec<&str> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["text"].as_str().expect("text"))
            .collect();
        assert_eq!(
            texts,
            ["bye", "good", "fine", "how are you?", "hi"],
            "newest first"
        );
        assert_eq!(page["has_more"], false);
        assert!(page["next_time"].is_null());
    }

    // Chats list: most recently active first, with the other participant.
    let carol = s.user("carol").await;
    let other_chat = s.chat_between(&alice, &carol).await;
    let list: Value = s
        .get("/chats", Some(&alice))
        .await
        .json()
        .await
        .expect("json");
    let chats = list["chats"].as_array().expect("chats");
    assert_eq!(chats.len(), 2);
    assert_eq!(
        chats[0]["id"],
        json!(other_chat),
        "newest chat first before it has messages"
    );
    s.sent(id, &bob, "one more").await;
    let list: Value = s
        .get("/chats", Some(&alice))
        .await
        .json()
        .await
        .expect("json");
    let chats = list["chats"].as_array().expect("chats");
    assert_eq!(
        chats[0]["id"],
        json!(id),
        "the chat with the latest message first"
    );
    assert_eq!(chats[0]["other"]["username"], "bob");
    assert!(list["next_cursor"].is_null(), "one page holds both");
    // A page at a time.
    let first: Value = s
        .get("/chats?limit=1", Some(&alice))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        first["chats"].as_array().map(|c| c[0]["id"].clone()),
        Some(json!(id))
    );
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second: Value = s
        .get(&format!("/chats?limit=1&cursor={cursor}"), Some(&alice))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        second["chats"].as_array().map(|c| c[0]["id"].clone()),
        Some(json!(other_chat))
    );
    assert!(second["next_cursor"].is_null(), "the last page");
    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=501", "invalid_limit"),
        ("limit=x", "invalid_limit"),
        ("limit=", "invalid_limit"),
        ("cursor=garbage", "invalid_cursor"),
        ("cursor=1.not-a-uuid", "invalid_cursor"),
    ] {
        let r = s.get(&format!("/chats?{query}"), Some(&alice)).await;
        assert_eq!(
            testkit::error_code(r, reqwest::StatusCode::BAD_REQUEST).await,
            code,
            "{query}"
        );
    }
    let bobs: Value = s
        .get("/chats", Some(&bob))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(bobs["chats"].as_array().expect("chats").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_user_is_locked_out_of_every_chat_route() {
    let s = spawn().await;
    let (alice, bob, mallory) = (
        s.user("alice").await,
        s.user("bob").await,
        s.user("mallory").await,
    );
    let id = s.chat_between(&alice, &bob).await;
    s.sent(id, &alice, "secret").await;
    let missing = Uuid::new_v4();
    for chat in [id.to_string(), missing.to_string(), "not-a-uuid".to_owned()] {
        let r = s.get(&format!("/chat/{chat}"), Some(&mallory)).await;
        assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
        let r = s
            .get(&format!("/chat/{chat}?quantity=5"), Some(&mallory))
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = s
            .post(
                &format!("/chat/{chat}/messages"),
                Some(&mallory),
                &json!({"text": "hi"}),
            )
            .await;
        assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    }
    // Nothing mallory did reached the chat.
    let page = s.history(id, &alice, "").await;
    assert_eq!(page["messages"].as_array().expect("messages").len(), 1);
    let list: Value = s
        .get("/chats", Some(&mallory))
        .await
        .json()
        .await
        .expect("json");
    assert!(list["chats"].as_array().expect("chats").is_empty());
    // Without a token: 401 everywhere.
    for path in ["/chats".to_owned(), format!("/chat/{id}")] {
        assert_eq!(s.get(&path, None).await.status(), StatusCode::UNAUTHORIZED);
    }
    let r = s
        .post(&format!("/chat/{id}/messages"), None, &json!({"text": "x"}))
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s.post("/chats", None, &json!({"user_id": alice.id})).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_chat_with_yourself_or_nobody_is_refused() {
    let s = spawn().await;
    let alice = s.user("alice").await;
    let r = s
        .post("/chats", Some(&alice), &json!({ "user_id": alice.id }))
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "self_chat"
    );
    let r = s
        .post(
            "/chats",
            Some(&alice),
            &json!({ "user_id": Uuid::new_v4() }),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "unknown_user"
    );
    let r = s
        .post("/chats", Some(&alice), &json!({ "user_id": "bob" }))
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_body"
    );
    let r = s.post("/chats", Some(&alice), &json!({})).await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_body"
    );
    let list: Value = s
        .get("/chats", Some(&alice))
        .await
        .json()
        .await
        .expect("json");
    assert!(list["chats"].as_array().expect("chats").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_refused_and_nothing_is_stored() {
    let s = spawn().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let id = s.chat_between(&alice, &bob).await;
    let path = format!("/chat/{id}/messages");
    for (body, code) in [
        (json!({"text": ""}), "empty_text"),
        (json!({"text": "  \n "}), "empty_text"),
        (json!({"text": "x".repeat(4001)}), "text_too_long"),
        (
            json!({"text": "ok", "client_message_id": ""}),
            "invalid_client_message_id",
        ),
        (
            json!({"text": "ok", "client_message_id": "has space"}),
            "invalid_client_message_id",
        ),
        (json!({}), "invalid_body"),
        (json!({"text": 5}), "invalid_body"),
    ] {
        let r = s.post(&path, Some(&alice), &body).await;
        assert_eq!(
            error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
            code,
            "{body}"
        );
    }
    let r = s
        .post(&path, Some(&alice), &json!({"text": "x".repeat(100_000)}))
        .await;
    // Refused by the body limit from its Content-Length, with a JSON body.
    assert_eq!(
        error_code(r, StatusCode::PAYLOAD_TOO_LARGE).await,
        "body_too_large"
    );
    let r = s
        .client
        .post(s.chat_url(&path))
        .bearer_auth(&alice.token)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("send");
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "malformed_json"
    );
    assert_eq!(
        s.sent(id, &alice, &"x".repeat(4000)).await["text"]
            .as_str()
            .map(str::len),
        Some(4000)
    );
    let page = s.history(id, &alice, "").await;
    assert_eq!(page["messages"].as_array().expect("messages").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_parameters_are_checked() {
    let s = spawn().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let id = s.chat_between(&alice, &bob).await;
    for (query, code) in [
        ("quantity=0", "invalid_quantity"),
        ("quantity=101", "invalid_quantity"),
        ("quantity=abc", "invalid_quantity"),
        ("quantity=-5", "invalid_quantity"),
        ("time=yesterday", "invalid_time"),
        (&format!("time={}", Uuid::new_v4()), "invalid_time"),
    ] {
        let r = s.get(&format!("/chat/{id}?{query}"), Some(&alice)).await;
        assert_eq!(
            error_code(r, StatusCode::BAD_REQUEST).await,
            code,
            "{query}"
        );
    }
    for i in 0..12 {
        s.sent(id, &alice, &format!("m{i}")).await;
    }
    let page = s.history(id, &alice, "").await;
    assert_eq!(
        page["messages"].as_array().expect("messages").len(),
        10,
        "default quantity"
    );
    assert_eq!(page["has_more"], true);
    let page = s.history(id, &alice, "quantity=100").await;
    assert_eq!(page["messages"].as_array().expect("messages").len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_from_the_future_or_before_the_first_message() {
    let s = spawn().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let id = s.chat_between(&alice, &bob).await;
    // Before any message exists: an empty page.
    let empty = s.history(id, &alice, "").await;
    assert_eq!(empty["messages"], json!([]));
    assert_eq!(empty["has_more"], false);

    let first = s.sent(id, &alice, "first").await;
    s.sent(id, &bob, "second").await;
    // A TimeUUID a day ahead: everything older than it, i.e. the newest page.
    let future = uuid::Uuid::new_v1(
        uuid::Timestamp::from_unix(
            uuid::NoContext,
            time::OffsetDateTime::now_utc().unix_timestamp() as u64 + 86_400,
            0,
        ),
        &[1, 2, 3, 4, 5, 6],
    );
    let page = s.history(id, &alice, &format!("time={future}")).await;
    assert_eq!(page, s.history(id, &alice, "").await);
    assert_eq!(page["messages"].as_array().expect("messages").len(), 2);
    // At or before the first message: nothing older, no next page.
    for before in [
        first["id"].as_str().expect("id").to_owned(),
        uuid::Uuid::new_v1(
            uuid::Timestamp::from_unix(uuid::NoContext, 1_000_000_000, 0),
            &[0; 6],
        )
        .to_string(),
    ] {
        let page = s.history(id, &alice, &format!("time={before}")).await;
        assert_eq!(page["messages"], json!([]), "{before}");
        assert_eq!(page["has_more"], false);
        assert!(page["next_time"].is_null());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_client_message_id_returns_the_original() {
    let s = spawn().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let id = s.chat_between(&alice, &bob).await;
    let r = s.send(id, &alice, "hello", Some("c-1")).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let original: Value = r.json().await.expect("json");
    let r = s.send(id, &alice, "hello (edited?)", Some("c-1")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let repeat: Value = r.json().await.expect("json");
    assert_eq!(repeat, original);

    // Concurrent repeats of a fresh id: one message, everyone gets its id.
    let sends = (0..12).map(|_| s.send(id, &alice, "race", Some("c-2")));
    let responses = futures::future::join_all(sends).await;
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for r in responses {
        match r.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::OK => {}
            other => panic!("unexpected {other}"),
        }
        let m: Value = r.json().await.expect("json");
        ids.insert(m["id"].as_str().expect("id").to_owned());
    }
    assert_eq!((created, ids.len()), (1, 1));
    // The same client id from the other sender is a different message.
    assert_eq!(
        s.send(id, &bob, "mine", Some("c-1")).await.status(),
        StatusCode::CREATED
    );
    let page = s.history(id, &alice, "quantity=100").await;
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().expect("text"))
        .collect();
    assert_eq!(texts, ["mine", "race", "hello"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_too_fast_gets_429_and_recovers() {
    let s = spawn_with(|c| {
        c.limits.send_rate_per_sec = std::num::NonZeroU32::new(2).expect("positive");
        c.limits.send_burst = std::num::NonZeroU32::new(3).expect("positive");
    })
    .await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let id = s.chat_between(&alice, &bob).await;
    for i in 0..3 {
        assert_eq!(
            s.send(id, &alice, &format!("m{i}"), None).await.status(),
            StatusCode::CREATED
        );
    }
    let r = s.send(id, &alice, "too fast", None).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
    // Another user is not affected.
    assert_eq!(
        s.send(id, &bob, "hi", None).await.status(),
        StatusCode::CREATED
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        s.send(id, &alice, "later", None).await.status(),
        StatusCode::CREATED
    );
    let page = s.history(id, &alice, "quantity=100").await;
    assert_eq!(page["messages"].as_array().expect("messages").len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_metrics_and_openapi() {
    let s = spawn().await;
    assert_eq!(s.get("/healthz", None).await.status(), StatusCode::OK);
    let ready: Value = s.get("/readyz", None).await.json().await.expect("json");
    assert_eq!(
        (ready["store"].as_str(), ready["log"].as_str()),
        (Some("embedded"), Some("embedded"))
    );
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let id = s.chat_between(&alice, &bob).await;
    s.sent(id, &alice, "hi").await;
    let metrics = s.get("/metrics", None).await.text().await.expect("text");
    assert!(metrics.contains("chat_messages_sent_total"), "{metrics}");
    testkit::assert_metrics_described(&metrics);
    let doc: Value = s
        .get("/openapi.json", None)
        .await
        .json()
        .await
        .expect("json");
    for path in ["/chats", "/chat/{id}", "/chat/{id}/messages"] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_survive_a_restart() {
    let s = spawn().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let id = s.chat_between(&alice, &bob).await;
    s.sent(id, &alice, "before restart").await;
    let before = s.history(id, &bob, "").await;
    let s = s.restart().await;
    assert_eq!(s.history(id, &bob, "").await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_on_configured_origins_only() {
    let s = crate::helpers::spawn_with(|c| {
        c.cors = service_kit::cors::CorsConfig::origins(&["https://app.example"]).expect("origin");
    })
    .await;
    let base = s.chat_url("");
    testkit::assert_cors(
        &base,
        "/chats",
        Some("https://app.example"),
        "https://evil.example",
    )
    .await;
    let closed = spawn().await;
    testkit::assert_cors(&closed.chat_url(""), "/chats", None, "https://app.example").await;
}
