use chat_events::TimeUuid;
use futures::StreamExt;
use serde_json::Value;

use crate::helpers::spawn;

/// 1,000 messages, many in the same millisecond, paged with every quantity
/// from 1 to 100: each message exactly once, newest first, no gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_through_a_thousand_messages_with_every_quantity() {
    let s = spawn().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let id = s.chat_between(&alice, &bob).await;

    let sent: Vec<Value> = futures::stream::iter(0..1000)
        .map(|i| {
            let from = if i % 3 == 0 { &bob } else { &alice };
            let s = &s;
            async move { s.sent(id, from, &format!("message {i}")).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut expected: Vec<TimeUuid> = sent
        .iter()
        .map(|m| TimeUuid::parse(m["id"].as_str().expect("id")).expect("v1"))
        .collect();
    expected.sort_by_key(|t| std::cmp::Reverse(t.sort_key()));
    let millis: std::collections::HashSet<i64> = expected.iter().map(|t| t.unix_millis()).collect();
    eprintln!("1000 messages over {} distinct milliseconds", millis.len());

    for quantity in 1..=100 {
        let mut seen = Vec::with_capacity(1000);
        let mut query = format!("quantity={quantity}");
        loop {
            let page = s.history(id, &alice, &query).await;
            let messages = page["messages"].as_array().expect("messages");
            assert!(messages.len() <= quantity);
            for m in messages {
                seen.push(TimeUuid::parse(m["id"].as_str().expect("id")).expect("v1"));
            }
            if page["has_more"] == false {
                assert!(page["next_time"].is_null());
                break;
            }
            assert_eq!(messages.len(), quantity, "a short page must be the last");
            let next = page["next_time"].as_str().expect("next_time");
            assert_eq!(next, messages.last().expect("last")["id"]);
            query = format!("quantity={quantity}&time={next}");
        }
        assert_eq!(seen, expected, "quantity {quantity}");
    }
}
