//! Kafka mode against a real Kafka-protocol broker (Tansu).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chat_events::{ChatEvent, ChatEventType, Event, MessageCreated, UserId};
use chat_service::config::LogKind;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message as _};
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{error_code, spawn_with, start_chat, Broker, Stack};

const TOPIC: &str = "chat.messages.test";

fn kafka_mode(broker: &Broker) -> impl FnOnce(&mut chat_service::Config) + '_ {
    move |c| {
        c.log.kind = LogKind::Kafka;
        c.log.kafka.kafka_brokers = broker.brokers();
        c.log.kafka.kafka_topic = TOPIC.into();
        c.log.kafka_partitions = std::num::NonZeroU16::new(3).expect("positive");
        c.log.kafka_message_timeout_ms = 1500;
        // Tansu 0.6 (see the option's docs).
        c.log.kafka_batch_num_messages = std::num::NonZeroU32::MIN;
    }
}

/// Every record on the topic (key, decoded event), read from the start
/// until `want` records arrived and then one quiet second more.
fn read_topic(brokers: &str, want: usize) -> Vec<(String, Event)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet_since: Option<Instant> = None;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(record)) => {
                let key = String::from_utf8(record.key().expect("key").to_vec()).expect("utf8 key");
                let event = Event::decode(record.payload().expect("payload")).expect("decodes");
                out.push((key, event));
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
        if out.len() >= want {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(1) {
                break;
            }
        }
    }
    out
}

async fn acked_ids(s: &Stack, chat: Uuid, from: &crate::helpers::User, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let m: Value = s.sent(chat, from, &format!("k{i}")).await;
        ids.push(m["id"].as_str().expect("id").to_owned());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topic_holds_exactly_the_acknowledged_messages() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let s = spawn_with(kafka_mode(&broker)).await;
    let ready: Value = s.get("/readyz", None).await.json().await.expect("json");
    assert_eq!(ready["log"], "kafka");
    let (alice, bob, carol) = (
        s.user("alice").await,
        s.user("bob").await,
        s.user("carol").await,
    );
    let ab = s.chat_between(&alice, &bob).await;
    let ac = s.chat_between(&alice, &carol).await;
    let mut acked = acked_ids(&s, ab, &alice, 15).await;
    acked.extend(acked_ids(&s, ac, &carol, 10).await);
    acked.extend(acked_ids(&s, ab, &bob, 5).await);

    let all = read_topic(&broker.brokers(), acked.len() + 2);
    // Each POST /chats put the chat's chat.created on the log, keyed by it.
    let created: Vec<(&String, &ChatEvent)> = all
        .iter()
        .filter_map(|(key, e)| match e {
            Event::Chat(c) => Some((key, c)),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 2, "{created:?}");
    for (key, c) in created {
        assert_eq!(c.kind, ChatEventType::ChatCreated);
        assert_eq!(key, &c.chat_id.to_string());
        assert_eq!(c.members.len(), 2);
        assert!(c.members.contains(&UserId::from(alice.id)));
    }
    let records: Vec<(String, MessageCreated)> = all
        .into_iter()
        .filter_map(|(key, e)| match e {
            Event::Message(m) => Some((key, m)),
            _ => None,
        })
        .collect();
    assert_eq!(
        records.len(),
        acked.len(),
        "one record per acknowledged message"
    );
    let on_topic: HashSet<String> = records.iter().map(|(_, e)| e.id.to_string()).collect();
    assert_eq!(on_topic, acked.iter().cloned().collect::<HashSet<_>>());
    for (key, event) in &records {
        assert_eq!(key, &event.chat_id.to_string(), "keyed by chat id");
        assert_eq!(event.v, 1);
        assert_eq!(event.kind, "message.created");
        let expected_recipient = if event.chat_id.uuid() == ab {
            if event.sender_id.uuid() == alice.id {
                bob.id
            } else {
                alice.id
            }
        } else {
            if event.sender_id.uuid() == alice.id {
                carol.id
            } else {
                alice.id
            }
        };
        assert_eq!(
            event.recipient_id.map(UserId::uuid),
            Some(expected_recipient)
        );
    }
    // Within a chat, the topic order is the id order (one partition per key).
    let ab_ids: Vec<Uuid> = records
        .iter()
        .filter(|(_, e)| e.chat_id.uuid() == ab)
        .map(|(_, e)| e.id)
        .collect();
    let mut sorted = ab_ids.clone();
    sorted.sort_by_key(|id| {
        chat_events::TimeUuid::from_uuid(*id)
            .expect("v1")
            .sort_key()
    });
    assert_eq!(ab_ids, sorted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_down_sends_fail_and_a_retry_completes_them() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    let s = spawn_with(kafka_mode(&broker)).await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let chat = s.chat_between(&alice, &bob).await;
    let before = acked_ids(&s, chat, &alice, 3).await;

    broker.kill();
    let started = Instant::now();
    let r = s.send(chat, &alice, "while down", Some("retry-me")).await;
    assert_eq!(
        error_code(r, StatusCode::SERVICE_UNAVAILABLE).await,
        "unavailable"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        s.get("/readyz", None).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let r = s.send(chat, &alice, "also while down", None).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);

    // The broker comes back (empty: Tansu's memory storage); a fresh
    // chat-service process recreates the topic. The client retries.
    broker.restart();
    let Stack {
        auth,
        chat: old,
        client,
        data_dir,
        config,
    } = s;
    old.stop().await;
    let s = Stack {
        auth,
        chat: start_chat(config.clone()).await,
        client,
        data_dir,
        config,
    };
    let r = s.send(chat, &alice, "while down", Some("retry-me")).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the retry returns the stored original"
    );
    let retried: Value = r.json().await.expect("json");
    let after = acked_ids(&s, chat, &bob, 2).await;

    let records = read_topic(&broker.brokers(), 3);
    let ids: Vec<String> = records
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Message(m) => Some(m.id.to_string()),
            _ => None,
        })
        .collect();
    let mut expected = vec![retried["id"].as_str().expect("id").to_owned()];
    expected.extend(after);
    assert_eq!(ids, expected, "the retried message was re-published once");
    // Everything acknowledged is in history; the message whose send failed
    // without a client id is stored but was never acknowledged.
    let page = s.history(chat, &bob, "quantity=100").await;
    let in_history: HashSet<String> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_owned())
        .collect();
    for id in before.iter().chain(expected.iter()) {
        assert!(
            in_history.contains(id),
            "{id} acknowledged but not in history"
        );
    }
}
