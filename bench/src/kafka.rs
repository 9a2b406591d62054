//! Figure 4: the aggregator in Kafka mode against a plain rdkafka consumer.
//!
//! One topic on a Tansu broker is filled with a bursty conversation mix.
//! Then, in three rounds on the same topic and in the same run, a plain
//! `StreamConsumer` (receive and count, nothing else) reads it all, the
//! `aggregator` binary (Kafka source → batcher → embedded sink, `realtime.db`)
//! consumes it all and shuts down cleanly (final flush and commit included),
//! and the plain consumer reads it all once more. The baseline is the mean of
//! the two plain rounds, so drift of the machine during the run shows in
//! their spread. Each consumer has a group of its own; time runs from its
//! first record to its last (to the aggregator's clean exit), so group joins
//! are not counted. The aggregator's documents are checked afterwards: every
//! chat's batches must hold exactly the messages produced for it.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use chat_events::{ChatId, MessageCreated, TimeUuidGenerator, UserId};
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{figure, Figure};

const TOPIC: &str = "bench.messages";
const PARTITIONS: i32 = 4;

/// What the aggregator figure runs on.
pub struct Load {
    pub messages: usize,
    pub chats: usize,
}

/// Runs figure 4, or says why it cannot (no Tansu binary).
pub async fn aggregator_vs_plain(load: &Load, bin_dir: &Path) -> anyhow::Result<Option<Figure>> {
    let Some(broker) = testkit::Broker::start() else {
        return Ok(None);
    };
    let brokers = broker.brokers();
    chat_service::log::kafka::ensure_topic(&brokers, TOPIC, PARTITIONS, 1).await?;
    let expected = produce(&brokers, load).await?;

    let plain_before = plain_consumer(&brokers, load.messages).await?;
    let (aggregator, checked) = aggregator(&brokers, bin_dir, load.messages, &expected).await?;
    let plain_after = plain_consumer(&brokers, load.messages).await?;
    drop(broker);

    let rate = |secs: f64| load.messages as f64 / secs;
    let baseline = (rate(plain_before) + rate(plain_after)) / 2.0;
    Ok(Some(figure(
        "aggregator messages/s (Kafka mode)",
        rate(aggregator),
        "msg/s",
        Some(baseline),
        format!(
            "{} messages ({} chats, turns of 1-20, 64-byte text) on a {PARTITIONS}-partition \
             Tansu topic; aggregator: Kafka source, embedded sink, final flush and commit included; \
             baseline: plain rdkafka StreamConsumer, mean of a round before and after",
            load.messages, load.chats
        ),
        json!({
            "aggregator_secs": aggregator,
            "plain_before_per_sec": rate(plain_before),
            "plain_after_per_sec": rate(plain_after),
            "chats_checked": checked,
        }),
    )))
}

/// Fills the topic; returns how many messages each chat got.
async fn produce(brokers: &str, load: &Load) -> anyhow::Result<HashMap<Uuid, usize>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("Kafka producer")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let ids = TimeUuidGenerator::new();
    let start = OffsetDateTime::now_utc();
    let mut chats: Vec<Chat> = (0..load.chats)
        .map(|_| Chat::new(start, &mut rng))
        .collect();
    let events: Vec<MessageCreated> = (0..load.messages)
        .map(|_| {
            let i = rng.gen_range(0..chats.len());
            chats[i].next(&ids, &mut rng)
        })
        .collect();
    let mut expected = HashMap::new();
    for e in &events {
        *expected.entry(e.chat_id.uuid()).or_insert(0) += 1;
    }
    let delivered = futures::stream::iter(events)
        .map(|event| {
            let producer = producer.clone();
            async move {
                let key = event.chat_id.to_string();
                let payload = event.encode();
                producer
                    .send(
                        FutureRecord::to(TOPIC).key(&key).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .is_ok()
            }
        })
        .buffer_unordered(10_000)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    anyhow::ensure!(
        delivered == load.messages,
        "only {delivered} of {} events reached the broker",
        load.messages
    );
    Ok(expected)
}

/// One conversation of the mix: turns of 1-20 messages 0.1-0.6 s apart,
/// 2-30 s between turns, alternating senders.
struct Chat {
    id: ChatId,
    users: [UserId; 2],
    clock: OffsetDateTime,
    speaker: usize,
    left_in_turn: u32,
}

impl Chat {
    fn new(start: OffsetDateTime, rng: &mut impl Rng) -> Self {
        let users = [UserId::from(Uuid::new_v4()), Uuid::new_v4().into()];
        Self {
            id: chat_events::chat_id(users[0], users[1]),
            users,
            clock: start,
            speaker: 0,
            left_in_turn: rng.gen_range(1..=20),
        }
    }

    fn next(&mut self, ids: &TimeUuidGenerator, rng: &mut impl Rng) -> MessageCreated {
        if self.left_in_turn == 0 {
            self.speaker = 1 - self.speaker;
            self.left_in_turn = rng.gen_range(1..=20);
            self.clock += time::Duration::milliseconds(rng.gen_range(2_000..30_000));
        } else {
            self.clock += time::Duration::milliseconds(rng.gen_range(100..600));
        }
        self.left_in_turn -= 1;
        MessageCreated::new(
            ids.next().uuid(),
            self.id,
            self.users[self.speaker],
            Some(self.users[1 - self.speaker]),
            crate::TEXT.into(),
            self.clock,
        )
    }
}

fn group(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("bench-{name}-{nanos}")
}

/// Seconds a plain consumer takes from its first record to its `total`th.
async fn plain_consumer(brokers: &str, total: usize) -> anyhow::Result<f64> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group("plain"))
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .create()
        .context("plain consumer")?;
    consumer.subscribe(&[TOPIC])?;
    let mut stream = consumer.stream();
    let mut first = None;
    let (mut seen, mut bytes) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < total {
        let next = tokio::time::timeout_at(deadline.into(), stream.next()).await;
        let Ok(Some(record)) = next else {
            anyhow::bail!("plain consumer stopped at {seen} of {total} records");
        };
        let record = record.context("plain consumer")?;
        first.get_or_insert_with(Instant::now);
        bytes += record.payload().map_or(0, <[u8]>::len);
        seen += 1;
    }
    anyhow::ensure!(bytes > 0, "plain consumer read empty records");
    Ok(first.map_or(0.0, |t| t.elapsed().as_secs_f64()))
}

/// Seconds the aggregator binary takes from its first record to its clean
/// exit after taking in `total`; also checks what it wrote. Returns the
/// number of chats checked.
async fn aggregator(
    brokers: &str,
    bin_dir: &Path,
    total: usize,
    expected: &HashMap<Uuid, usize>,
) -> anyhow::Result<(f64, usize)> {
    let bin = bin_dir.join("aggregator");
    anyhow::ensure!(bin.exists(), "{} not found", bin.display());
    let data = tempfile::tempdir()?;
    // The embedded sink serves SSE, which checks chat membership in chat.db.
    chat_service::store::sqlite::SqliteStore::open(data.path(), Default::default())
        .await?
        .close()
        .await;
    let group = group("aggregator");
    let args = [
        "--source",
        "kafka",
        "--sink",
        "embedded",
        "--kafka-brokers",
        brokers,
        "--kafka-topic",
        TOPIC,
        "--kafka-group-id",
        &group,
        // Only its SSE routes check tokens; none are used here.
        "--jwt-secret",
        "bench-secret-bench-secret-bench-secret",
    ];
    let mut server = crate::Server::start_with(&bin, data, &args)?;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    loop {
        let taken = crate::messages_in(&http, &server.base).await.unwrap_or(0);
        if taken > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if taken >= total as u64 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "aggregator took in only {taken} of {total} records"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exit = tokio::task::block_in_place(|| server.stop());
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    anyhow::ensure!(exit.success(), "the aggregator exited with {exit}");

    let store = aggregator::sink::embedded::EmbeddedSink::open(
        server.data_dir(),
        Duration::from_secs(30 * 24 * 3600),
        aggregator::sink::embedded::FeedRetention {
            max_bytes: 128 << 20,
        },
        Default::default(),
    )
    .await?;
    for (chat, want) in expected {
        let (docs, _) = store.feed().snapshot(*chat, i64::MAX).await?;
        let held: u64 = docs.iter().filter_map(|d| d["count"].as_u64()).sum();
        anyhow::ensure!(
            held == *want as u64,
            "chat {chat}: documents hold {held} messages, {want} were produced"
        );
    }
    store.close().await;
    Ok((secs, expected.len()))
}
