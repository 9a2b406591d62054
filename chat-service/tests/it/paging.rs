use std::collections::HashSet;

use chat_events::TimeUuid;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{spawn, Stack, User};

fn id_of(item: &Value) -> TimeUuid {
    TimeUuid::parse(item["id"].as_str().expect("id")).expect("v1")
}

/// Every item of the timeline, paged by `quantity`: history (newest first,
/// `time`) or catch-up (oldest first, `after`, from `start`).
async fn page_all(
    s: &Stack,
    chat: uuid::Uuid,
    user: &User,
    quantity: usize,
    start: Option<TimeUuid>,
) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut query = match start {
        Some(after) => format!("quantity={quantity}&after={after}"),
        None => format!("quantity={quantity}"),
    };
    loop {
        let page = s.history(chat, user, &query).await;
        let items = page["messages"].as_array().expect("messages");
        assert!(items.len() <= quantity);
        seen.extend(items.iter().cloned());
        let cursor = if start.is_some() {
            "next_after"
        } else {
            "next_time"
        };
        if page["has_more"] == false {
            if start.is_none() {
                assert!(page["next_time"].is_null());
            }
            break;
        }
        assert_eq!(items.len(), quantity, "a short page must be the last");
        let next = page[cursor].as_str().expect("cursor");
        assert_eq!(next, items.last().expect("last")["id"]);
        query = match start {
            Some(_) => format!("quantity={quantity}&after={next}"),
            None => format!("quantity={quantity}&time={next}"),
        };
    }
    seen
}

/// A group's timeline of 900 messages and 101 events, many in the same
/// millisecond, paged with every quantity from 1 to 100 in both directions:
/// each item exactly once, in id order, no gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_a_timeline_both_ways_with_every_quantity() {
    let s = spawn().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let r = s
        .post(
            "/chats",
            Some(&alice),
            &json!({"title": "paging", "member_ids": [bob.id]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let chat: uuid::Uuid = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");

    let sent: Vec<Option<Value>> = futures::stream::iter(0..1000)
        .map(|i| {
            let s = &s;
            let (alice, bob) = (&alice, &bob);
            async move {
                if i % 10 == 5 {
                    let path = format!("/chat/{chat}");
                    let body = json!({"title": format!("title {i}")});
                    let r = s.call(Method::PATCH, &path, Some(alice), Some(&body)).await;
                    assert_eq!(r.status(), StatusCode::OK);
                    None
                } else {
                    let from = if i % 3 == 0 { bob } else { alice };
                    Some(s.sent(chat, from, &format!("message {i}")).await)
                }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let messages: HashSet<TimeUuid> = sent.iter().flatten().map(id_of).collect();
    assert_eq!(messages.len(), 900);

    let newest_first = page_all(&s, chat, &alice, 100, None).await;
    let ids: Vec<TimeUuid> = newest_first.iter().map(id_of).collect();
    let mut sorted = ids.clone();
    sorted.sort_by_key(|t| std::cmp::Reverse(t.sort_key()));
    assert_eq!(ids, sorted, "newest first");
    let types = |t: &str| newest_first.iter().filter(|i| i["type"] == t).count();
    assert_eq!(
        (
            types("message"),
            types("chat_renamed"),
            types("chat_created")
        ),
        (900, 100, 1)
    );
    let in_history: HashSet<TimeUuid> = ids
        .iter()
        .zip(&newest_first)
        .filter(|(_, i)| i["type"] == "message")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(in_history, messages);
    let millis: HashSet<i64> = ids.iter().map(|t| t.unix_millis()).collect();
    eprintln!("1001 items over {} distinct milliseconds", millis.len());

    let created = *ids.last().expect("chat_created");
    let oldest_first: Vec<TimeUuid> = ids.iter().rev().copied().collect();
    for quantity in 1..=100 {
        let back: Vec<TimeUuid> = page_all(&s, chat, &alice, quantity, None)
            .await
            .iter()
            .map(id_of)
            .collect();
        assert_eq!(back, ids, "history, quantity {quantity}");
        let forward: Vec<TimeUuid> = page_all(&s, chat, &bob, quantity, Some(created))
            .await
            .iter()
            .map(id_of)
            .collect();
        assert_eq!(forward, oldest_first[1..], "catch-up, quantity {quantity}");
    }
}
