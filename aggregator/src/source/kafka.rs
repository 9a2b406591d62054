//! Kafka through `rdkafka`: a consumer group member with
//! `enable.auto.offset.store=false`. An offset is stored only when the sink
//! write covering every earlier record of its partition has succeeded;
//! librdkafka auto-commits stored offsets every second, and [`Source::close`]
//! commits synchronously.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chat_events::MessageCreated;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::{Delivery, Source, SourceError};
use crate::batcher::Position;

#[derive(Debug, Clone)]
pub struct KafkaSourceSettings {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub session_timeout: Duration,
    pub max_poll_interval: Duration,
}

pub struct KafkaSource {
    consumer: Arc<StreamConsumer>,
    topic: String,
    /// Highest offset delivered, per partition.
    seen: HashMap<i32, i64>,
    /// Offsets already stored, per partition (next offset to read).
    stored: HashMap<i32, i64>,
}

impl KafkaSource {
    pub fn connect(settings: &KafkaSourceSettings) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set(
                "session.timeout.ms",
                settings.session_timeout.as_millis().to_string(),
            )
            .set(
                "max.poll.interval.ms",
                settings.max_poll_interval.as_millis().to_string(),
            )
            .create()
            .context("creating the Kafka consumer")?;
        consumer
            .subscribe(&[&settings.topic])
            .context("subscribing to the topic")?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: settings.topic.clone(),
            seen: HashMap::new(),
            stored: HashMap::new(),
        })
    }

    fn store(&mut self, uncovered: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        let mut tpl = TopicPartitionList::new();
        for (&partition, &max) in &self.seen {
            let next = uncovered.get(&partition).copied().unwrap_or(max + 1);
            if self.stored.get(&partition).is_some_and(|&s| s >= next) {
                continue;
            }
            tpl.add_partition_offset(&self.topic, partition, Offset::Offset(next))
                .map_err(|e| SourceError::Failed(e.to_string()))?;
            self.stored.insert(partition, next);
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.store_offsets(&tpl) {
                // Typically a partition revoked by a rebalance: its new
                // owner resumes from the last committed offset.
                tracing::warn!(error = %e, "cannot store offsets");
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn next(&mut self) -> Result<Delivery, SourceError> {
        let record = self
            .consumer
            .recv()
            .await
            .map_err(|e| SourceError::Failed(e.to_string()))?;
        let position = Position {
            partition: record.partition(),
            offset: record.offset(),
        };
        let seen = self
            .seen
            .entry(position.partition)
            .or_insert(position.offset);
        *seen = (*seen).max(position.offset);
        let payload = record.payload().unwrap_or_default();
        Ok(match MessageCreated::decode(payload) {
            Ok(event) => Delivery::Event(event, position),
            Err(e) => Delivery::Undecodable(position, e.to_string()),
        })
    }

    async fn commit(&mut self, uncovered: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        self.store(uncovered)
    }

    async fn close(&mut self, uncovered: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        self.store(uncovered)?;
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync))
            .await
            .map_err(|e| SourceError::Failed(e.to_string()))?
            .or_else(|e| match e.rdkafka_error_code() {
                // Nothing new to commit.
                Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => Ok(()),
                _ => Err(SourceError::Failed(e.to_string())),
            })
    }

    async fn lag(&mut self) -> Option<i64> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let stored = self.stored.clone();
        tokio::task::spawn_blocking(move || {
            let assignment = consumer.assignment().ok()?;
            let mut lag = 0;
            for elem in assignment.elements_for_topic(&topic) {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, elem.partition(), Duration::from_secs(2))
                    .ok()?;
                let at = stored.get(&elem.partition()).copied().unwrap_or(0);
                lag += (high - at).max(0);
            }
            Some(lag)
        })
        .await
        .ok()
        .flatten()
    }
}
