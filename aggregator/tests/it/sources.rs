//! One suite for both sources (Kafka against the real broker, the embedded
//! outbox through chat-service's store), pinning what a committed position
//! means: after `commit(uncovered)` a new source starts at each partition's
//! first uncovered record; with nothing uncovered, right after the last
//! record delivered. Nothing before that comes again, nothing after it is
//! skipped.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aggregator::source::embedded::{EmbeddedSource, PositionFile};
use aggregator::source::Source;
use chat_events::{TimeUuidGenerator, UserId};
use chat_service::domain::MessageText;
use chat_service::outbox::OutboxReader;
use chat_service::store::sqlite::SqliteStore;
use chat_service::store::{ChatKind, Message, MessageStore, NewChat};
use uuid::Uuid;

use crate::common::{self, producer, publish, Conversation};

/// The next record's position (partition, offset).
async fn next(source: &mut dyn Source) -> (i32, i64) {
    let position = common::next_position(source).await;
    (position.partition, position.offset)
}

/// Runs the suite. `open` starts a source at the committed position;
/// `append` adds one record; `first` is the log's first position; ten
/// records are on the log (partition 0) when it starts.
async fn committed_position_means_the_same<O, OF, A, AF>(open: O, append: A, first: i64)
where
    O: Fn() -> OF,
    OF: Future<Output = Box<dyn Source>>,
    A: Fn() -> AF,
    AF: Future<Output = ()>,
{
    let mut source = open().await;
    let mut delivered = Vec::new();
    for _ in 0..10 {
        delivered.push(next(&mut *source).await);
    }
    assert_eq!(
        delivered,
        (first..first + 10).map(|o| (0, o)).collect::<Vec<_>>(),
        "in log order, from the start"
    );

    // Records from the fifth on are applied but not written.
    let uncovered = BTreeMap::from([(0, first + 4)]);
    source.commit(&uncovered).await.expect("commit");
    source.close(&uncovered).await.expect("close");
    drop(source);
    let mut source = open().await;
    assert_eq!(
        next(&mut *source).await,
        (0, first + 4),
        "resumes at the first uncovered record"
    );
    for o in first + 5..first + 10 {
        assert_eq!(next(&mut *source).await, (0, o));
    }

    // Everything written: a restart resumes right after the last record.
    source.close(&BTreeMap::new()).await.expect("close");
    drop(source);
    append().await;
    let mut source = open().await;
    assert_eq!(
        next(&mut *source).await,
        (0, first + 10),
        "nothing delivered again, nothing skipped"
    );
    source.close(&BTreeMap::new()).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source() {
    let Some((_broker, brokers)) = common::broker_with_topic(1).await else {
        return;
    };
    let kafka = Arc::new(producer(&brokers));
    let chat = Arc::new(std::sync::Mutex::new(Conversation::new()));
    let say = || {
        let event = chat.lock().expect("chat").say(0, 100, "hi");
        let kafka = kafka.clone();
        async move { publish(&kafka, &event).await }
    };
    for _ in 0..10 {
        say().await;
    }
    let open = || {
        let brokers = brokers.clone();
        async move { Box::new(common::kafka_source(&brokers, "source-suite")) as Box<dyn Source> }
    };
    committed_position_means_the_same(open, say, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_source() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = data.path().into();
    let (store, _log) = SqliteStore::open_with_outbox(&dir, Default::default())
        .await
        .expect("store");
    let users = [UserId::from(Uuid::new_v4()), Uuid::new_v4().into()];
    let ids = TimeUuidGenerator::new();
    let name = |id: UserId| (id, id.uuid().simple().to_string());
    let (new, log) = NewChat::direct(name(users[0]), name(users[1]), 0, ids.next());
    let chat = new.chat.clone();
    store.create_chat(new, log).await.expect("chat");
    let say = || {
        let message = Message {
            id: ids.next(),
            chat_id: chat.id,
            sender_id: users[0],
            text: MessageText::parse("hi".into()).expect("text"),
            client_message_id: None,
            reply_to: None,
        };
        let event = message.event(ChatKind::Direct, Some(users[1])).into();
        let store = store.clone();
        async move {
            store.insert_message(message, event).await.expect("insert");
        }
    };
    for _ in 0..10 {
        say().await;
    }
    let open = || {
        let dir = dir.clone();
        async move {
            let outbox = OutboxReader::open(&dir, Duration::ZERO)
                .await
                .expect("outbox");
            let source = EmbeddedSource::new(
                outbox,
                PositionFile::in_dir(&dir),
                Duration::from_millis(20),
                None,
            )
            .await
            .expect("source");
            Box::new(source) as Box<dyn Source>
        }
    };
    committed_position_means_the_same(open, say, 1).await;
}
