//! One suite for every `MessageStore`: the embedded SQLite store always, and
//! Cassandra/ScyllaDB when `TEST_CQL_CONTACT_POINTS` names a node (each run
//! in a fresh keyspace). The output says plainly when the CQL run is skipped.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chat_events::{ChatId, TimeUuid, TimeUuidGenerator, UserId};
use chat_service::domain::{ClientMessageId, MessageText};
use chat_service::store::cql::{CqlSettings, CqlStore};
use chat_service::store::sqlite::SqliteStore;
use chat_service::store::{Chat, Inserted, Message, MessageStore, Participant};
use scylla::statement::Consistency;
use uuid::Uuid;

type Store = Arc<dyn MessageStore>;

async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _outbox) = SqliteStore::open_with_outbox(dir.path())
        .await
        .expect("open");
    (Arc::new(store), dir)
}

async fn cql() -> Option<Store> {
    let Ok(points) = std::env::var("TEST_CQL_CONTACT_POINTS") else {
        eprintln!("SKIPPED the CQL store suite: TEST_CQL_CONTACT_POINTS is not set (no Cassandra/ScyllaDB here)");
        return None;
    };
    let settings = CqlSettings {
        contact_points: points.split(',').map(str::to_owned).collect(),
        keyspace: format!("chat_test_{}", Uuid::new_v4().simple()),
        replication_factor: 1,
        consistency: Consistency::LocalQuorum,
        bucket: Duration::from_secs(3600),
        username: std::env::var("TEST_CQL_USERNAME").ok(),
        password: std::env::var("TEST_CQL_PASSWORD").ok(),
    };
    Some(Arc::new(
        CqlStore::connect(&settings).await.expect("connect to CQL"),
    ))
}

macro_rules! store_suite {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = super::sqlite().await;
                    super::$name(store).await;
                }
            )*
        }
        mod cql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(store) = super::cql().await {
                        super::$name(store).await;
                    }
                }
            )*
        }
    };
}

store_suite!(
    chats_are_created_once_and_listed_by_activity,
    history_is_newest_first_and_strictly_before,
    paging_a_thousand_same_millisecond_messages,
    client_ids_deduplicate_even_concurrently,
);

/// A fresh random id of either kind.
fn new_id<T: From<Uuid>>() -> T {
    Uuid::new_v4().into()
}

fn chat_of(a: UserId, b: UserId) -> Chat {
    Chat {
        id: chat_events::chat_id(a, b),
        participants: [
            Participant {
                id: a,
                username: "a".into(),
            },
            Participant {
                id: b,
                username: "b".into(),
            },
        ],
        created_at: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
    }
}

fn message(chat: &Chat, id: TimeUuid, from: usize, client: Option<&str>) -> Message {
    Message {
        id,
        chat_id: chat.id,
        sender_id: chat.participants[from].id,
        recipient_id: chat.participants[1 - from].id,
        text: MessageText::parse(format!("text of {id}")).expect("text"),
        client_message_id: client.map(|c| ClientMessageId::parse(c.into()).expect("client id")),
    }
}

async fn chats_are_created_once_and_listed_by_activity(store: Store) {
    let (a, b, c) = (new_id(), new_id(), new_id());
    // Created in the past, so a message sent now is clearly the latest activity.
    let mut ab = chat_of(a, b);
    ab.created_at -= 2000;
    assert!(store.create_chat(&ab).await.expect("create"));
    assert!(!store.create_chat(&ab).await.expect("create again"));
    assert_eq!(store.chat(ab.id).await.expect("get"), Some(ab.clone()));
    assert_eq!(store.chat(new_id()).await.expect("get"), None);

    let mut ac = chat_of(a, c);
    ac.created_at -= 1000;
    store.create_chat(&ac).await.expect("create");
    let listed: Vec<ChatId> = store
        .chats_of(a)
        .await
        .expect("list")
        .iter()
        .map(|s| s.chat.id)
        .collect();
    assert_eq!(listed, [ac.id, ab.id]);

    let ids = TimeUuidGenerator::new();
    let m = message(&ab, ids.next(), 1, None);
    store.insert_message(m.clone()).await.expect("insert");
    let summaries = store.chats_of(a).await.expect("list");
    assert_eq!(summaries[0].chat.id, ab.id);
    assert_eq!(summaries[0].last_message_id, Some(m.id));
    assert_eq!(store.chats_of(b).await.expect("list").len(), 1);
    // One chat alone, as each member sees it; nobody else sees it.
    for user in [a, b] {
        assert_eq!(
            store.chat_summary(user, ab.id).await.expect("one"),
            Some(summaries[0].clone())
        );
    }
    assert_eq!(store.chat_summary(c, ab.id).await.expect("one"), None);
    assert_eq!(store.chat_summary(a, new_id()).await.expect("one"), None);
    assert!(store.chats_of(new_id()).await.expect("list").is_empty());
}

async fn history_is_newest_first_and_strictly_before(store: Store) {
    let chat = chat_of(new_id(), new_id());
    store.create_chat(&chat).await.expect("create");
    let ids = TimeUuidGenerator::new();
    let mut all = Vec::new();
    for i in 0..5 {
        let m = message(&chat, ids.next(), i % 2, None);
        assert!(matches!(
            store.insert_message(m.clone()).await.expect("insert"),
            Inserted::New(_)
        ));
        all.push(m);
    }
    let newest_first: Vec<Message> = all.iter().rev().cloned().collect();
    assert_eq!(
        store.history(chat.id, None, 10).await.expect("history"),
        newest_first
    );
    assert_eq!(
        store.history(chat.id, None, 2).await.expect("history"),
        newest_first[..2]
    );
    assert_eq!(
        store
            .history(chat.id, Some(all[3].id), 10)
            .await
            .expect("history"),
        newest_first[2..]
    );
    assert!(store
        .history(chat.id, Some(all[0].id), 10)
        .await
        .expect("history")
        .is_empty());
    assert!(store
        .history(new_id(), None, 10)
        .await
        .expect("history")
        .is_empty());
}

async fn paging_a_thousand_same_millisecond_messages(store: Store) {
    let chat = chat_of(new_id(), new_id());
    store.create_chat(&chat).await.expect("create");
    let ids = TimeUuidGenerator::new();
    let messages: Vec<Message> = (0..1000)
        .map(|i| message(&chat, ids.next(), i % 2, None))
        .collect();
    let per_ms = messages
        .iter()
        .map(|m| m.id.unix_millis())
        .collect::<HashSet<_>>()
        .len();
    assert!(
        per_ms < 500,
        "ids should crowd into few milliseconds, got {per_ms} distinct"
    );
    for m in &messages {
        store.insert_message(m.clone()).await.expect("insert");
    }
    let expected: Vec<TimeUuid> = messages.iter().rev().map(|m| m.id).collect();
    for quantity in 1..=100 {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .history(chat.id, before, quantity)
                .await
                .expect("history");
            seen.extend(page.iter().map(|m| m.id));
            if page.len() < quantity {
                break;
            }
            before = page.last().map(|m| m.id);
        }
        assert_eq!(seen, expected, "quantity {quantity}");
    }
}

async fn client_ids_deduplicate_even_concurrently(store: Store) {
    let chat = chat_of(new_id(), new_id());
    store.create_chat(&chat).await.expect("create");
    let ids = Arc::new(TimeUuidGenerator::new());
    let first = message(&chat, ids.next(), 0, Some("k1"));
    assert_eq!(
        store.insert_message(first.clone()).await.expect("insert"),
        Inserted::New(first.clone())
    );
    let again = message(&chat, ids.next(), 0, Some("k1"));
    assert_eq!(
        store.insert_message(again).await.expect("insert"),
        Inserted::Existing(first.clone())
    );

    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, ids, chat) = (store.clone(), ids.clone(), chat.clone());
            tokio::spawn(async move {
                store
                    .insert_message(message(&chat, ids.next(), 1, Some("k2")))
                    .await
            })
        })
        .collect();
    let mut new = 0;
    let mut winners = HashSet::new();
    for t in tasks {
        let outcome = t.await.expect("join").expect("insert");
        if matches!(outcome, Inserted::New(_)) {
            new += 1;
        }
        winners.insert(outcome.message().id);
    }
    assert_eq!((new, winners.len()), (1, 1));
    let history = store.history(chat.id, None, 100).await.expect("history");
    assert_eq!(history.len(), 2, "{history:?}");
}
