//! One suite for both sinks: the embedded store always, Firestore against
//! the emulator.

use std::sync::Arc;
use std::time::Duration;

use aggregator::batcher::{Batch, BatchMessage, Position, Summary, Write};
use aggregator::sink::embedded::{EmbeddedSink, FeedRetention, Resume};
use aggregator::sink::firestore::FirestoreSink;
use aggregator::sink::{Sink, SinkError};
use chat_events::TimeUuidGenerator;
use time::OffsetDateTime;
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const RETAIN: FeedRetention = FeedRetention {
    max_bytes: 128 << 20,
};

fn batch(chat: Uuid, seq: u64, count: usize, closed: bool, ids: &TimeUuidGenerator) -> Batch {
    let sender = Uuid::new_v4();
    // Whole microseconds: what Firestore keeps.
    let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
    Batch {
        chat_id: chat,
        batch_id: Uuid::nil(),
        seq,
        chat_kind: chat_events::ChatKind::Direct,
        title: None,
        members: vec![sender, Uuid::new_v4()],
        sender_id: sender,
        messages: (0..count)
            .map(|i| BatchMessage {
                id: ids.next().uuid(),
                text: format!("m{i}"),
                sent_at: t0 + time::Duration::milliseconds(i as i64),
                reply_to: None,
                event: None,
            })
            .collect(),
        closed,
        last_position: Position {
            partition: 0,
            offset: seq as i64 * 100 + count as i64,
        },
    }
    .with_first_id()
}

trait WithFirstId {
    fn with_first_id(self) -> Self;
}

impl WithFirstId for Batch {
    fn with_first_id(mut self) -> Self {
        self.batch_id = self.messages[0].id;
        self
    }
}

fn grown(b: &Batch, by: usize, ids: &TimeUuidGenerator) -> Batch {
    let mut next = b.clone();
    for i in 0..by {
        let last = next.last().sent_at;
        next.messages.push(BatchMessage {
            id: ids.next().uuid(),
            text: format!("more {i}"),
            sent_at: last + time::Duration::milliseconds(1),
            reply_to: None,
            event: None,
        });
    }
    next.last_position.offset += by as i64;
    next
}

fn write(batch: &Batch, closing: Option<&Batch>, new: bool) -> Write {
    Write {
        chat_id: batch.chat_id,
        closing: closing.into_iter().cloned().collect(),
        batch: batch.clone(),
        batch_changed: true,
        summary: new.then(|| Summary {
            chat_id: batch.chat_id,
            chat_kind: batch.chat_kind,
            title: batch.title.clone(),
            members: batch.members.clone(),
            last_batch_id: batch.batch_id,
            last_batch_seq: batch.seq,
            last_sender_id: batch.sender_id,
            last_activity: batch.last().sent_at,
            read: [(batch.sender_id, batch.last().id)].into_iter().collect(),
        }),
        covers: vec![batch.last_position],
    }
}

async fn suite(sink: Arc<dyn Sink>) {
    let ids = TimeUuidGenerator::new();
    let chat = Uuid::new_v4();
    assert_eq!(sink.newest_batch(chat).await.expect("read"), None);
    assert!(sink.read_horizons(chat).await.expect("read").is_empty());

    let first = batch(chat, 1, 2, false, &ids);
    assert_eq!(
        sink.write(&write(&first, None, true)).await.expect("write"),
        2,
        "batch + summary"
    );
    // The summary's read receipts come back for a restart.
    let horizons = sink.read_horizons(chat).await.expect("read");
    assert_eq!(
        horizons.into_iter().collect::<Vec<_>>(),
        [(first.sender_id, first.last().id)]
    );
    assert_eq!(
        sink.newest_batch(chat).await.expect("read"),
        Some(first.clone())
    );

    // Unchanged documents are not rewritten.
    assert_eq!(
        sink.write(&write(&first, None, false))
            .await
            .expect("write"),
        0
    );

    let bigger = grown(&first, 3, &ids);
    assert_eq!(
        sink.write(&write(&bigger, None, false))
            .await
            .expect("write"),
        1
    );
    // The older state must not overwrite the newer one.
    match sink.write(&write(&first, None, false)).await {
        Err(SinkError::Stale(c)) => assert_eq!(c, chat),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        sink.newest_batch(chat).await.expect("read"),
        Some(bigger.clone())
    );

    // Closing one batch and starting the next is one write of 3 documents.
    let mut closed = bigger.clone();
    closed.closed = true;
    let second = batch(chat, 2, 1, false, &ids);
    assert_eq!(
        sink.write(&write(&second, Some(&closed), true))
            .await
            .expect("write"),
        3
    );
    assert_eq!(sink.newest_batch(chat).await.expect("read"), Some(second));
    // Un-closing is going backwards too.
    assert!(matches!(
        sink.write(&write(&bigger, None, false)).await,
        Err(SinkError::Stale(_))
    ));
    sink.ping().await.expect("ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = EmbeddedSink::open(dir.path(), TTL, RETAIN, Default::default())
        .await
        .expect("open");
    suite(Arc::new(sink)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firestore_sink() {
    if testkit::firestore_emulator().is_none() {
        return;
    }
    let project = format!("sinks-{}", Uuid::new_v4().simple());
    let sink = FirestoreSink::connect(&project, TTL)
        .await
        .expect("connect");
    suite(Arc::new(sink)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_embedded_documents_are_removed_with_a_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = EmbeddedSink::open(
        dir.path(),
        Duration::from_secs(60),
        RETAIN,
        Default::default(),
    )
    .await
    .expect("open");
    let mut live = sink.feed().subscribe();
    let ids = TimeUuidGenerator::new();
    let chat = Uuid::new_v4();
    let old = batch(chat, 1, 2, true, &ids); // last message in 2027, expires 60 s later
    sink.write(&write(&old, None, true)).await.expect("write");
    let added = live.recv().await.expect("added");
    assert_eq!(added.kind, "added");

    let before = old.last().sent_at + time::Duration::seconds(59);
    assert_eq!(sink.expire(before).await.expect("expire"), 0, "not yet");
    let after = old.last().sent_at + time::Duration::seconds(60);
    assert_eq!(sink.expire(after).await.expect("expire"), 1);
    let removed = live.recv().await.expect("removed");
    assert_eq!(
        (removed.kind.as_str(), removed.doc_value()["seq"].as_u64()),
        ("removed", Some(1))
    );
    assert_eq!(sink.newest_batch(chat).await.expect("read"), None);
    let replay = sink
        .feed()
        .changes_since(chat, added.version, i64::MAX)
        .await
        .expect("changes")
        .changes()
        .expect("kept");
    assert_eq!(
        replay.iter().map(|c| c.kind.as_str()).collect::<Vec<_>>(),
        ["removed"]
    );
    assert_eq!(sink.expire(after).await.expect("expire"), 0, "once");
}

/// The change feed keeps what its byte bound allows and no more: the oldest
/// changes go first, a cursor into them is "too old", a recent one resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_stays_within_its_byte_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bound = 64 * 1024;
    let sink = EmbeddedSink::open(
        dir.path(),
        TTL,
        FeedRetention { max_bytes: bound },
        Default::default(),
    )
    .await
    .expect("open");
    let ids = TimeUuidGenerator::new();
    let chat = Uuid::new_v4();
    let mut versions = Vec::new();
    let mut live = sink.feed().subscribe();
    let mut current = batch(chat, 1, 1, false, &ids);
    sink.write(&write(&current, None, true))
        .await
        .expect("write");
    versions.push(live.recv().await.expect("change").version);
    for _ in 0..200 {
        current = grown(&current, 1, &ids);
        sink.write(&write(&current, None, false))
            .await
            .expect("write");
        versions.push(live.recv().await.expect("change").version);
    }
    let path = dir.path().join(aggregator::sink::embedded::FILE);
    let (rows, bytes, stored): (i64, i64, i64) = {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.query_row(
            "SELECT (SELECT rows FROM feed_size), (SELECT bytes FROM feed_size), \
             (SELECT SUM(length(CAST(doc AS BLOB))) FROM changes)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("sizes")
    };
    assert_eq!(bytes, stored, "the kept count matches the table");
    assert!(bytes <= bound, "{bytes} bytes kept, bound {bound}");
    assert!(rows > 1 && rows < 201, "{rows} changes kept");
    let feed = sink.feed();
    assert!(matches!(
        feed.changes_since(chat, versions[0], i64::MAX)
            .await
            .expect("read"),
        Resume::TooOld
    ));
    let recent = versions[versions.len() - 3];
    let changes = feed
        .changes_since(chat, recent, i64::MAX)
        .await
        .expect("read")
        .changes()
        .expect("kept");
    assert_eq!(
        changes.iter().map(|c| c.version).collect::<Vec<_>>(),
        versions[versions.len() - 2..]
    );
    // Read a page at a time.
    let page = feed
        .changes_since(chat, recent, 1)
        .await
        .expect("read")
        .changes()
        .expect("kept");
    assert_eq!(
        page.iter().map(|c| c.version).collect::<Vec<_>>(),
        versions[versions.len() - 2..versions.len() - 1]
    );
}
