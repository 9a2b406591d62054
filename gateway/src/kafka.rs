//! Kafka: the event topic read whole by every replica, and the signals
//! topic between replicas.
//!
//! **Events.** Not a consumer group: each replica assigns itself every
//! partition of the topic and starts `--events-backfill` records before the
//! end (spread over the partitions), so the cursors its clients held before
//! a restart resume exactly. It commits nothing: its position is its
//! clients' cursors.
//!
//! **Signals.** Typing and presence, JSON, on a topic of their own with a
//! short retention (`--signals-retention-ms`). Each replica produces its
//! users' signals and reads every partition from the end.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::broadcast;

use crate::log::{LogSource, Record};
use crate::signals::{Signal, SignalBus};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

fn consumer(brokers: &str) -> anyhow::Result<StreamConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // Only to satisfy the client: nothing joins a group or commits.
        .set("group.id", format!("gateway-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .context("creating the Kafka consumer")
}

/// The number of partitions of `topic`, waiting up to `wait` for it to
/// exist (chat-service creates it).
async fn partitions(consumer: &StreamConsumer, topic: &str, wait: Duration) -> anyhow::Result<i32> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .context("reading the topic's metadata")?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        if count > 0 {
            return Ok(i32::try_from(count).unwrap_or(i32::MAX));
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "topic {topic} does not exist: start chat-service (it creates it)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The event topic, every partition, from a little before the end.
pub struct KafkaLog {
    consumer: StreamConsumer,
    start: Vec<i64>,
    head: Vec<i64>,
}

impl KafkaLog {
    pub async fn connect(
        brokers: &str,
        topic: &str,
        backfill: u64,
        wait: Duration,
    ) -> anyhow::Result<Self> {
        let consumer = consumer(brokers)?;
        let count = partitions(&consumer, topic, wait).await?;
        let per_partition = i64::try_from(backfill / u64::try_from(count).unwrap_or(1).max(1))
            .unwrap_or(i64::MAX / 2);
        let mut assignment = TopicPartitionList::new();
        let (mut start, mut head) = (Vec::new(), Vec::new());
        for p in 0..count {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, METADATA_TIMEOUT)
                .with_context(|| format!("reading the offsets of partition {p}"))?;
            let from = (high - per_partition).max(low).max(0);
            assignment
                .add_partition_offset(topic, p, Offset::Offset(from))
                .context("assigning a partition")?;
            start.push(from);
            head.push(high);
        }
        consumer
            .assign(&assignment)
            .context("assigning the topic")?;
        tracing::info!(
            topic,
            partitions = count,
            ?start,
            ?head,
            "reading the event topic"
        );
        Ok(Self {
            consumer,
            start,
            head,
        })
    }
}

#[async_trait]
impl LogSource for KafkaLog {
    fn start(&self) -> Vec<i64> {
        self.start.clone()
    }

    fn head(&self) -> Vec<i64> {
        self.head.clone()
    }

    async fn next(&mut self) -> anyhow::Result<Vec<Record>> {
        let message = self
            .consumer
            .recv()
            .await
            .context("reading the event topic")?;
        Ok(vec![Record {
            partition: usize::try_from(message.partition()).unwrap_or(usize::MAX),
            offset: message.offset(),
            payload: message.payload().unwrap_or_default().to_vec(),
        }])
    }

    fn backend(&self) -> &'static str {
        "kafka"
    }
}

/// Typing and presence between replicas, over `topic`.
pub struct KafkaSignals {
    producer: FutureProducer,
    topic: String,
    local: broadcast::Sender<Signal>,
}

impl KafkaSignals {
    /// Creates the topic (`retention` short) unless it exists, and starts
    /// reading it from the end.
    pub async fn connect(
        brokers: &str,
        topic: &str,
        partitions: i32,
        retention: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .context("creating the Kafka admin client")?;
        let retention_ms = retention.as_millis().to_string();
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
            .set("retention.ms", &retention_ms);
        let options = AdminOptions::new().operation_timeout(Some(Timeout::After(METADATA_TIMEOUT)));
        for result in admin
            .create_topics([&new], &options)
            .await
            .context("creating the signals topic")?
        {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
            }
        }
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "0")
            .set("acks", "1")
            .set("message.timeout.ms", "5000")
            .create()
            .context("creating the Kafka producer")?;
        let consumer = consumer(brokers)?;
        let count = partitions_of(&consumer, topic).await?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..count {
            assignment
                .add_partition_offset(topic, p, Offset::End)
                .context("assigning a partition")?;
        }
        consumer
            .assign(&assignment)
            .context("assigning the signals topic")?;
        let local = broadcast::Sender::new(4096);
        let signals = Arc::new(Self {
            producer,
            topic: topic.to_owned(),
            local: local.clone(),
        });
        tokio::spawn(async move {
            loop {
                match consumer.recv().await {
                    Ok(message) => {
                        match serde_json::from_slice::<Signal>(
                            message.payload().unwrap_or_default(),
                        ) {
                            Ok(signal) => {
                                let _ = local.send(signal);
                            }
                            Err(e) => tracing::debug!(error = %e, "skipping a signal"),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the signals topic");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(signals)
    }
}

async fn partitions_of(consumer: &StreamConsumer, topic: &str) -> anyhow::Result<i32> {
    partitions(consumer, topic, METADATA_TIMEOUT).await
}

#[async_trait]
impl SignalBus for KafkaSignals {
    async fn publish(&self, signal: Signal) {
        let key = match &signal {
            Signal::Typing { chat_id, .. } => chat_id.to_string(),
            Signal::Presence { user_id, .. } => user_id.to_string(),
            Signal::Heartbeat { replica, .. } => replica.to_string(),
        };
        let Ok(payload) = serde_json::to_vec(&signal) else {
            return;
        };
        let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
        if let Err((e, _)) = self.producer.send(record, Duration::from_secs(5)).await {
            tracing::warn!(error = %e, "publishing a signal");
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.local.subscribe()
    }
}
