//! Group chats, members and roles, replies, catch-up and read state, over
//! HTTP.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{error_code, spawn, spawn_with, Stack, User};

async fn json(r: reqwest::Response) -> Value {
    r.json().await.expect("json")
}

/// Registered users, one per name.
async fn users<const N: usize>(s: &Stack, names: [&str; N]) -> [User; N] {
    let made = futures::future::join_all(names.map(|n| s.user(n))).await;
    made.try_into()
        .unwrap_or_else(|_| unreachable!("one user per name"))
}

async fn create_group(s: &Stack, owner: &User, title: &str, members: &[&User]) -> Uuid {
    let ids: Vec<Uuid> = members.iter().map(|m| m.id).collect();
    let r = s
        .post(
            "/chats",
            Some(owner),
            &json!({"title": title, "member_ids": ids}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    json(r).await["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid")
}

async fn rename(s: &Stack, chat: Uuid, user: &User, title: &str) -> reqwest::Response {
    s.call(
        Method::PATCH,
        &format!("/chat/{chat}"),
        Some(user),
        Some(&json!({"title": title})),
    )
    .await
}

async fn add(s: &Stack, chat: Uuid, user: &User, who: Uuid) -> reqwest::Response {
    s.post(
        &format!("/chat/{chat}/members"),
        Some(user),
        &json!({"user_id": who}),
    )
    .await
}

async fn remove(s: &Stack, chat: Uuid, user: &User, who: Uuid) -> reqwest::Response {
    s.call(
        Method::DELETE,
        &format!("/chat/{chat}/members/{who}"),
        Some(user),
        None,
    )
    .await
}

async fn set_role(s: &Stack, chat: Uuid, user: &User, who: Uuid, role: &str) -> reqwest::Response {
    s.call(
        Method::PATCH,
        &format!("/chat/{chat}/members/{who}"),
        Some(user),
        Some(&json!({"role": role})),
    )
    .await
}

async fn members(s: &Stack, chat: Uuid, user: &User) -> Vec<Value> {
    let r = s.get(&format!("/chat/{chat}/members"), Some(user)).await;
    assert_eq!(r.status(), StatusCode::OK);
    json(r).await["members"]
        .as_array()
        .expect("members")
        .clone()
}

async fn listed(s: &Stack, user: &User, chat: Uuid) -> Option<Value> {
    let r = s.get("/chats", Some(user)).await;
    assert_eq!(r.status(), StatusCode::OK);
    json(r).await["chats"]
        .as_array()
        .expect("chats")
        .iter()
        .find(|c| c["id"] == json!(chat))
        .cloned()
}

async fn read(s: &Stack, chat: Uuid, user: &User, message: &Value) -> reqwest::Response {
    s.post(
        &format!("/chat/{chat}/read"),
        Some(user),
        &json!({"message_id": message}),
    )
    .await
}

/// The timeline's item types, oldest first.
async fn timeline(s: &Stack, chat: Uuid, user: &User) -> Vec<Value> {
    let page = s.history(chat, user, "quantity=100").await;
    let mut items = page["messages"].as_array().expect("items").clone();
    items.reverse();
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_created_listed_and_renamed_by_their_managers() {
    let s = spawn_with(|c| c.limits.max_group_members = 4).await;
    let [alice, bob, carol, dave, erin] =
        users(&s, ["alice", "bob", "carol", "dave", "erin"]).await;
    // Duplicates and the caller are ignored.
    let r = s
        .post(
            "/chats",
            Some(&alice),
            &json!({"title": "Trip", "member_ids": [bob.id, carol.id, bob.id, alice.id]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let group = json(r).await;
    assert_eq!(group["kind"], "group");
    assert_eq!(group["title"], "Trip");
    assert_eq!(group["member_count"], 3);
    assert!(group["other"].is_null() && group["last_message"].is_null());
    let chat: Uuid = group["id"].as_str().expect("id").parse().expect("uuid");
    assert_eq!(chat.get_version_num(), 4, "a group's id is random");

    for (body, code) in [
        (
            json!({"title": "", "member_ids": [bob.id]}),
            "invalid_title",
        ),
        (
            json!({"title": " ", "member_ids": [bob.id]}),
            "invalid_title",
        ),
        (
            json!({"title": "x".repeat(101), "member_ids": [bob.id]}),
            "invalid_title",
        ),
        (json!({"title": "T", "member_ids": []}), "members_required"),
        (
            json!({"title": "T", "member_ids": [alice.id]}),
            "members_required",
        ),
        (
            json!({"title": "T", "member_ids": [Uuid::new_v4()]}),
            "unknown_user",
        ),
        (
            json!({"title": "T", "member_ids": [bob.id, carol.id, dave.id, erin.id]}),
            "too_many_members",
        ),
    ] {
        let r = s.post("/chats", Some(&alice), &body).await;
        assert_eq!(
            error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
            code,
            "{body}"
        );
    }
    let both = json!({"user_id": bob.id, "title": "T", "member_ids": [bob.id]});
    let r = s.post("/chats", Some(&alice), &both).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    for user in [&alice, &bob, &carol] {
        let entry = listed(&s, user, chat).await.expect("listed");
        assert_eq!(
            (entry["title"].clone(), entry["unread_count"].clone()),
            (json!("Trip"), json!(0))
        );
    }
    assert!(listed(&s, &dave, chat).await.is_none());
    // The owner first; those who joined together by id.
    let roles: Vec<(Value, Value)> = members(&s, chat, &bob)
        .await
        .iter()
        .map(|m| (m["id"].clone(), m["role"].clone()))
        .collect();
    let mut others = [bob.id, carol.id];
    others.sort();
    assert_eq!(
        roles,
        [
            (json!(alice.id), json!("owner")),
            (json!(others[0]), json!("member")),
            (json!(others[1]), json!("member"))
        ]
    );

    let r = rename(&s, chat, &bob, "Mine now").await;
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "not_allowed");
    let r = rename(&s, chat, &alice, "Trip 2027").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json(r).await["title"], "Trip 2027");
    let r = rename(&s, chat, &alice, "").await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        set_role(&s, chat, &alice, carol.id, "admin").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        rename(&s, chat, &carol, "Carol's trip").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        rename(&s, chat, &dave, "stranger").await.status(),
        StatusCode::NOT_FOUND
    );

    let items = timeline(&s, chat, &bob).await;
    let kinds: Vec<&str> = items
        .iter()
        .map(|i| i["type"].as_str().expect("type"))
        .collect();
    assert_eq!(kinds, ["chat_created", "chat_renamed", "chat_renamed"]);
    assert_eq!(items[0]["members"], json!([alice.id, bob.id, carol.id]));
    assert_eq!(items[0]["title"], "Trip");
    assert_eq!(
        (items[2]["actor_id"].clone(), items[2]["title"].clone()),
        (json!(carol.id), json!("Carol's trip"))
    );

    // A direct chat's members never change.
    let direct = s.chat_between(&alice, &bob).await;
    for r in [
        rename(&s, direct, &alice, "no").await,
        add(&s, direct, &alice, carol.id).await,
        remove(&s, direct, &alice, bob.id).await,
        set_role(&s, direct, &alice, bob.id, "admin").await,
    ] {
        assert_eq!(error_code(r, StatusCode::CONFLICT).await, "direct_chat");
    }
    let entry = listed(&s, &alice, direct).await.expect("listed");
    assert_eq!(
        (entry["kind"].clone(), entry["other"]["username"].clone()),
        (json!("direct"), json!("bob"))
    );
    assert!(
        timeline(&s, direct, &alice).await.is_empty(),
        "no events in a direct chat"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_removed_and_leave_with_roles_enforced() {
    let s = spawn_with(|c| c.limits.max_group_members = 4).await;
    let [alice, bob, carol, dave, erin] =
        users(&s, ["alice", "bob", "carol", "dave", "erin"]).await;
    let chat = create_group(&s, &alice, "Team", &[&bob, &carol]).await;
    let first = s.sent(chat, &bob, "before anything").await;

    let r = add(&s, chat, &bob, dave.id).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = add(&s, chat, &alice, dave.id).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let added = json(r).await;
    assert_eq!(
        (
            added["id"].clone(),
            added["role"].clone(),
            added["username"].clone()
        ),
        (json!(dave.id), json!("member"), json!("dave"))
    );
    assert_eq!(
        add(&s, chat, &alice, dave.id).await.status(),
        StatusCode::OK
    );
    let r = add(&s, chat, &alice, Uuid::new_v4()).await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "unknown_user"
    );
    let r = add(&s, chat, &alice, erin.id).await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "too_many_members"
    );
    // Joining late: nothing unread from before.
    assert_eq!(
        listed(&s, &dave, chat).await.expect("listed")["unread_count"],
        0
    );

    // Roles: the owner only.
    let r = set_role(&s, chat, &alice, carol.id, "admin").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json(r).await["role"], "admin");
    assert_eq!(
        set_role(&s, chat, &carol, bob.id, "admin").await.status(),
        StatusCode::FORBIDDEN
    );
    let r = set_role(&s, chat, &alice, alice.id, "member").await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "own_role"
    );
    let r = set_role(&s, chat, &alice, erin.id, "admin").await;
    assert_eq!(
        error_code(r, StatusCode::NOT_FOUND).await,
        "member_not_found"
    );
    assert_eq!(
        set_role(&s, chat, &alice, bob.id, "king").await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let r = remove(&s, chat, &alice, Uuid::new_v4()).await;
    assert_eq!(
        error_code(r, StatusCode::NOT_FOUND).await,
        "member_not_found"
    );
    assert_eq!(
        remove(&s, chat, &alice, Uuid::nil()).await.status(),
        StatusCode::NOT_FOUND
    );
    let r = s
        .call(
            Method::DELETE,
            &format!("/chat/{chat}/members/not-a-uuid"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Admins remove plain members, not the owner; members remove nobody.
    assert_eq!(
        remove(&s, chat, &bob, dave.id).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        remove(&s, chat, &carol, alice.id).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        remove(&s, chat, &carol, bob.id).await.status(),
        StatusCode::NO_CONTENT
    );

    // Bob is a stranger now: the same 404 as for a chat that does not exist.
    let nowhere = Uuid::new_v4();
    for target in [chat, nowhere] {
        for r in [
            s.get(&format!("/chat/{target}"), Some(&bob)).await,
            s.get(
                &format!("/chat/{target}?after={}", first["id"].as_str().expect("id")),
                Some(&bob),
            )
            .await,
            s.get(&format!("/chat/{target}/members"), Some(&bob)).await,
            s.send(target, &bob, "let me in", None).await,
            read(&s, target, &bob, &first["id"]).await,
            rename(&s, target, &bob, "x").await,
            add(&s, target, &bob, bob.id).await,
            remove(&s, target, &bob, bob.id).await,
        ] {
            assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
        }
    }
    assert!(listed(&s, &bob, chat).await.is_none());

    // Leaving; and when the owner leaves, the admin becomes the owner.
    assert_eq!(
        remove(&s, chat, &dave, dave.id).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        remove(&s, chat, &alice, alice.id).await.status(),
        StatusCode::NO_CONTENT
    );
    let left: Vec<(Value, Value)> = members(&s, chat, &carol)
        .await
        .iter()
        .map(|m| (m["id"].clone(), m["role"].clone()))
        .collect();
    assert_eq!(left, [(json!(carol.id), json!("owner"))]);
    assert_eq!(
        listed(&s, &carol, chat).await.expect("listed")["member_count"],
        1
    );

    let items = timeline(&s, chat, &carol).await;
    let events: Vec<(String, Value, Value)> = items
        .iter()
        .filter(|i| i["type"] != "message")
        .map(|i| {
            (
                i["type"].as_str().expect("type").to_owned(),
                i["actor_id"].clone(),
                i["user_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("chat_created".to_owned(), json!(alice.id), Value::Null),
            ("member_added".to_owned(), json!(alice.id), json!(dave.id)),
            ("member_removed".to_owned(), json!(carol.id), json!(bob.id)),
            ("member_removed".to_owned(), json!(dave.id), json!(dave.id)),
            (
                "member_removed".to_owned(),
                json!(alice.id),
                json!(alice.id)
            ),
        ]
    );
    // Erin fits now.
    assert_eq!(
        add(&s, chat, &carol, erin.id).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_catch_up_survive_a_restart() {
    let s = spawn().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let chat = s.chat_between(&alice, &bob).await;
    let mut sent = Vec::new();
    for i in 0..25 {
        sent.push(
            s.sent(
                chat,
                if i % 2 == 0 { &alice } else { &bob },
                &format!("m{i}"),
            )
            .await,
        );
    }
    let r = s
        .post(
            &format!("/chat/{chat}/messages"),
            Some(&bob),
            &json!({"text": "answer", "reply_to": sent[3]["id"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let reply = json(r).await;
    assert_eq!(reply["reply_to"], sent[3]["id"]);
    sent.push(reply);
    let elsewhere = create_group(&s, &alice, "other", &[&bob]).await;
    let foreign = s.sent(elsewhere, &alice, "not here").await;
    for bad in [
        foreign["id"].clone(),
        json!(Uuid::new_v4()),
        json!(chat_events::TimeUuidGenerator::new().next().uuid()),
    ] {
        let r = s
            .post(
                &format!("/chat/{chat}/messages"),
                Some(&bob),
                &json!({"text": "x", "reply_to": bad}),
            )
            .await;
        assert_eq!(
            error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
            "invalid_reply_to"
        );
    }

    let s = s.restart().await;
    let after = sent[4]["id"].as_str().expect("id");
    let page = s
        .history(chat, &alice, &format!("after={after}&quantity=10"))
        .await;
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["text"].as_str().expect("text"))
        .collect();
    assert_eq!(texts, (5..15).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert_eq!(
        (page["has_more"].clone(), page["next_after"].clone()),
        (json!(true), sent[14]["id"].clone())
    );
    assert!(page["next_time"].is_null());
    let rest = s
        .history(
            chat,
            &alice,
            &format!(
                "after={}&quantity=100",
                sent[14]["id"].as_str().expect("id")
            ),
        )
        .await;
    let items = rest["messages"].as_array().expect("items");
    assert_eq!(items.len(), 11);
    assert_eq!(items[10]["reply_to"], sent[3]["id"]);
    assert_eq!(
        (rest["has_more"].clone(), rest["next_after"].clone()),
        (json!(false), sent[25]["id"].clone())
    );
    let none = s
        .history(
            chat,
            &alice,
            &format!("after={}", sent[25]["id"].as_str().expect("id")),
        )
        .await;
    assert_eq!(
        (none["messages"].clone(), none["next_after"].clone()),
        (json!([]), sent[25]["id"].clone())
    );

    let time = sent[20]["id"].as_str().expect("id");
    for (query, code) in [
        (format!("after={after}&time={time}"), "time_and_after"),
        ("after=yesterday".to_owned(), "invalid_after"),
        (format!("after={}", Uuid::new_v4()), "invalid_after"),
        (format!("after={after}&quantity=0"), "invalid_quantity"),
        (format!("after={after}&quantity=101"), "invalid_quantity"),
    ] {
        let r = s.get(&format!("/chat/{chat}?{query}"), Some(&alice)).await;
        assert_eq!(
            error_code(r, StatusCode::BAD_REQUEST).await,
            code,
            "{query}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_state_moves_forward_and_unread_counts_are_exact() {
    let s = spawn().await;
    let [alice, bob, carol, dave] = users(&s, ["alice", "bob", "carol", "dave"]).await;
    let chat = create_group(&s, &alice, "Reads", &[&bob, &carol]).await;
    let mut from_bob = Vec::new();
    for i in 0..3 {
        from_bob.push(s.sent(chat, &bob, &format!("bob {i}")).await);
    }
    let long = "é".repeat(150);
    s.sent(chat, &carol, "carol 0").await;
    let last = s.sent(chat, &carol, &long).await;

    let unread = |user: &User| {
        let (s, user) = (&s, user.clone());
        async move { listed(s, &user, chat).await.expect("listed")["unread_count"].clone() }
    };
    assert_eq!(
        (
            unread(&alice).await,
            unread(&bob).await,
            unread(&carol).await
        ),
        (json!(5), json!(2), json!(0))
    );
    let entry = listed(&s, &alice, chat).await.expect("listed");
    assert_eq!(entry["last_message"]["id"], last["id"]);
    assert_eq!(entry["last_message"]["sender_id"], json!(carol.id));
    assert_eq!(entry["last_message"]["text"], "é".repeat(100));
    assert!(entry["last_read_id"].is_null());

    assert_eq!(
        read(&s, chat, &alice, &from_bob[2]["id"]).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(unread(&alice).await, json!(2));
    // Backwards changes nothing, and still answers 204.
    assert_eq!(
        read(&s, chat, &alice, &from_bob[0]["id"]).await.status(),
        StatusCode::NO_CONTENT
    );
    let entry = listed(&s, &alice, chat).await.expect("listed");
    assert_eq!(
        (entry["unread_count"].clone(), entry["last_read_id"].clone()),
        (json!(2), from_bob[2]["id"].clone())
    );
    let receipts: std::collections::HashMap<String, Value> = members(&s, chat, &bob)
        .await
        .iter()
        .map(|m| {
            (
                m["id"].as_str().expect("id").to_owned(),
                m["last_read_id"].clone(),
            )
        })
        .collect();
    assert_eq!(receipts[&alice.id.to_string()], from_bob[2]["id"]);
    assert_eq!(receipts[&bob.id.to_string()], from_bob[2]["id"]);
    assert_eq!(receipts[&carol.id.to_string()], last["id"]);
    let created = timeline(&s, chat, &alice).await[0]["id"].clone();
    let elsewhere = s.chat_between(&alice, &dave).await;
    let foreign = s.sent(elsewhere, &dave, "hi").await;
    for bad in [created, foreign["id"].clone(), json!(Uuid::new_v4())] {
        let r = read(&s, chat, &alice, &bad).await;
        assert_eq!(
            error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
            "invalid_message_id"
        );
    }
    assert_eq!(
        read(&s, chat, &dave, &last["id"]).await.status(),
        StatusCode::NOT_FOUND
    );
    // Sending reads the chat up to your message.
    s.sent(chat, &alice, "read it all").await;
    assert_eq!(
        (
            unread(&alice).await,
            unread(&bob).await,
            unread(&carol).await
        ),
        (json!(0), json!(3), json!(1))
    );
    // Most recently active first.
    let r = s.get("/chats", Some(&alice)).await;
    let order: Vec<Value> = json(r).await["chats"]
        .as_array()
        .expect("chats")
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(order, [json!(chat), json!(elsewhere)]);
}
