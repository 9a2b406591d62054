//! Kafka through `rdkafka`.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chat_events::Event;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use super::{LogError, MessageLog};

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub topic: String,
    /// Used when the topic is created at start-up.
    pub partitions: i32,
    pub replication_factor: i32,
    /// How long the producer keeps trying to deliver before the send fails.
    pub message_timeout: Duration,
    /// `batch.num.messages`: most records in one produce batch.
    pub batch_num_messages: u32,
}

pub struct KafkaLog {
    producer: FutureProducer,
    topic: String,
}

/// Creates `topic` unless it exists.
pub async fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    replication_factor: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating the Kafka admin client")?;
    let new = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(replication_factor),
    );
    let options =
        AdminOptions::new().operation_timeout(Some(Timeout::After(Duration::from_secs(10))));
    let results = admin
        .create_topics([&new], &options)
        .await
        .context("creating the Kafka topic")?;
    for result in results {
        match result {
            Ok(_) => tracing::info!(topic, partitions, "created Kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

impl KafkaLog {
    /// Creates the topic if missing and starts the producer.
    pub async fn connect(settings: &KafkaSettings) -> anyhow::Result<Self> {
        ensure_topic(
            &settings.brokers,
            &settings.topic,
            settings.partitions,
            settings.replication_factor,
        )
        .await?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set(
                "batch.num.messages",
                settings.batch_num_messages.to_string(),
            )
            .set(
                "message.timeout.ms",
                settings.message_timeout.as_millis().to_string(),
            )
            .create()
            .context("creating the Kafka producer")?;
        Ok(Self {
            producer,
            topic: settings.topic.clone(),
        })
    }
}

#[async_trait]
impl MessageLog for KafkaLog {
    async fn publish(&self, event: &Event) -> Result<(), LogError> {
        let key = event.chat_id().to_string();
        let payload = event.encode();
        let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
        self.producer
            .send(record, Timeout::After(Duration::from_secs(1)))
            .await
            .map(|_| ())
            .map_err(|(e, _)| LogError::Kafka(e.to_string()))
    }

    async fn ping(&self) -> Result<(), LogError> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(Duration::from_secs(2)))
                .map(|_| ())
                .map_err(|e| LogError::Kafka(e.to_string()))
        })
        .await
        .map_err(|e| LogError::Kafka(e.to_string()))?
    }

    fn backend(&self) -> &'static str {
        "kafka"
    }
}

impl Drop for KafkaLog {
    fn drop(&mut self) {
        // Deliver what is queued before the process goes.
        let _ = self.producer.flush(Timeout::After(Duration::from_secs(5)));
    }
}
