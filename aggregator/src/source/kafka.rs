//! Kafka through `rdkafka`: a consumer group member with
//! `enable.auto.offset.store=false`. An offset is stored only when the sink
//! write covering every earlier record of its partition has succeeded;
//! librdkafka auto-commits stored offsets every second, and [`Source::close`]
//! commits synchronously.
//!
//! **Group membership.** Rebalances are tracked in [`SourceStatus`]: the
//! process is ready only while the group has given it partitions. A member
//! that the group leaves without partitions while the topic holds records
//! that nobody consumes rejoins by itself (see [`Watchdog`]): after a crash
//! and an immediate restart, a broker can keep the new member waiting
//! behind the dead one. Apache Kafka evicts the dead member after its
//! session timeout; Tansu 0.6's coordinator may never assign the partitions
//! again. Rejoining does not depend on either, nor on a supervisor's timing.
//!
//! One Tansu 0.6 fault no member can undo: when a member's heartbeat
//! expires a crashed *leader* of a formed group, the group keeps the dead
//! leader's id (`Inner<Formed>::missed_heartbeat` in tansu-broker's
//! `coordinator/group/administrator.rs`), so after the next join only that
//! leader may sync, and the group waits for it until the broker restarts. A
//! leader leaving a forming group does the same. Seen in the crash test
//! with five kills and immediate restarts on a loaded machine; Apache Kafka
//! (what the deployment runs) elects a new leader instead.
//!
//! Another Tansu 0.6 fault: a fetch from an offset inside a stored record
//! batch skips the rest of that batch (`fetch` in tansu-storage's
//! `dynostore.rs` returns only batches whose base offset is at or past the
//! one asked for). This source commits the first record not yet written,
//! which can be inside a producer's batch, so the producers that write to
//! Tansu put one record in each batch (chat-service's
//! `--kafka-batch-num-messages 1`). Apache Kafka returns the whole batch.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chat_events::Event;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio::time::Instant;

use super::{Delivery, Source, SourceError, SourceStatus};
use crate::batcher::Position;

/// Records what each rebalance leaves this member with.
struct GroupContext {
    status: Arc<SourceStatus>,
    assigned: Arc<AtomicUsize>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = consumer.assignment().map_or(0, |a| a.count());
        self.assigned.store(partitions, Ordering::Relaxed);
        metrics::gauge!("aggregator_assigned_partitions").set(partitions as f64);
        match rebalance {
            Rebalance::Assign(_) => {
                tracing::info!(partitions, "consumer group assigned partitions")
            }
            Rebalance::Revoke(_) => tracing::info!(partitions, "consumer group revoked partitions"),
            Rebalance::Error(e) => tracing::warn!(error = %e, "consumer group rebalance failed"),
        }
        self.status
            .set_ready(partitions > 0, "no partitions assigned");
    }
}

type GroupConsumer = StreamConsumer<GroupContext>;

#[derive(Debug, Clone)]
pub struct KafkaSourceSettings {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub session_timeout: Duration,
    pub max_poll_interval: Duration,
    /// How long the group may leave this member without partitions while
    /// the topic has records nobody consumes before it rejoins.
    pub stall_timeout: Duration,
}

pub struct KafkaSource {
    consumer: Arc<GroupConsumer>,
    topic: String,
    /// Highest offset delivered, per partition.
    seen: HashMap<i32, i64>,
    /// Offsets already stored, per partition (next offset to read).
    stored: HashMap<i32, i64>,
    status: Arc<SourceStatus>,
    watchdog: Watchdog,
}

impl KafkaSource {
    pub fn connect(settings: &KafkaSourceSettings) -> anyhow::Result<Self> {
        let status = Arc::new(SourceStatus::new("kafka", "joining the consumer group"));
        let assigned = Arc::new(AtomicUsize::new(0));
        let context = GroupContext {
            status: status.clone(),
            assigned: assigned.clone(),
        };
        let consumer: GroupConsumer = ClientConfig::new()
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
            .create_with_context(context)
            .context("creating the Kafka consumer")?;
        consumer
            .subscribe(&[&settings.topic])
            .context("subscribing to the topic")?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: settings.topic.clone(),
            seen: HashMap::new(),
            stored: HashMap::new(),
            status,
            watchdog: Watchdog::new(assigned, settings.stall_timeout),
        })
    }

    /// Leaves the group and joins it again as a new member.
    fn rejoin(&mut self) -> anyhow::Result<()> {
        metrics::counter!("aggregator_group_rejoins_total").increment(1);
        self.consumer.unsubscribe();
        self.consumer
            .subscribe(&[&self.topic])
            .context("subscribing to the topic again")?;
        // Positions of partitions this member held are the group's again.
        self.seen.clear();
        self.stored.clear();
        Ok(())
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
        Ok(match Event::decode(payload) {
            Ok(event) => Delivery::Event(event, position),
            Err(e) => Delivery::Undecodable(position, e.to_string()),
        })
    }

    async fn commit(&mut self, uncovered: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        self.store(uncovered)?;
        if self.watchdog.due(Instant::now()) {
            let consumer = self.consumer.clone();
            let topic = self.topic.clone();
            let progress = tokio::task::spawn_blocking(move || group_progress(&consumer, &topic))
                .await
                .map_err(|e| SourceError::Failed(e.to_string()))?;
            match progress {
                Ok(progress) => {
                    if self.watchdog.stalled(progress, Instant::now()) {
                        tracing::warn!(
                            unread = progress.unread,
                            "the consumer group has left this member without partitions while \
                             nobody consumes the topic's unread records: rejoining"
                        );
                        self.rejoin()
                            .map_err(|e| SourceError::Failed(format!("{e:#}")))?;
                        self.watchdog.rejoined(Instant::now());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the group's progress"),
            }
        }
        Ok(())
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

    fn status(&self) -> Arc<SourceStatus> {
        self.status.clone()
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

/// What the group has consumed of the topic, as far as this member can see
/// without partitions: its committed offsets against the high watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupProgress {
    /// Sum of the committed offsets of every partition.
    pub committed: i64,
    /// Records above the committed offsets.
    pub unread: i64,
}

fn group_progress(consumer: &GroupConsumer, topic: &str) -> anyhow::Result<GroupProgress> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .context("topic metadata")?;
    let mut partitions = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            partitions.add_partition(topic, p.id());
        }
    }
    let committed = consumer
        .committed_offsets(partitions, TIMEOUT)
        .context("committed offsets")?;
    let mut progress = GroupProgress {
        committed: 0,
        unread: 0,
    };
    for elem in committed.elements_for_topic(topic) {
        let (low, high) = consumer
            .fetch_watermarks(topic, elem.partition(), TIMEOUT)
            .context("watermarks")?;
        let at = match elem.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        progress.committed += at;
        progress.unread += (high - at).max(0);
    }
    Ok(progress)
}

/// Decides when a member without partitions must rejoin: it has had none
/// for the stall timeout, the topic has unread records, and the group's
/// committed offsets have not moved over that time (so no other member is
/// consuming them). A spare replica (more replicas than partitions) never
/// rejoins while another one makes progress.
pub struct Watchdog {
    assigned: Arc<AtomicUsize>,
    stall_timeout: Duration,
    /// When this member was last seen with partitions (or rejoined).
    last_assigned: Instant,
    /// The group's progress when the current unassigned stretch began.
    baseline: Option<GroupProgress>,
    next_check: Instant,
}

impl Watchdog {
    pub fn new(assigned: Arc<AtomicUsize>, stall_timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            assigned,
            stall_timeout,
            last_assigned: now,
            baseline: None,
            next_check: now,
        }
    }

    fn check_every(&self) -> Duration {
        (self.stall_timeout / 4).max(Duration::from_millis(250))
    }

    /// Whether to read the group's progress now.
    pub fn due(&mut self, now: Instant) -> bool {
        if self.assigned.load(Ordering::Relaxed) > 0 {
            self.last_assigned = now;
            self.baseline = None;
            return false;
        }
        if now < self.next_check {
            return false;
        }
        self.next_check = now + self.check_every();
        true
    }

    /// Given the group's progress now, whether this member must rejoin.
    pub fn stalled(&mut self, progress: GroupProgress, now: Instant) -> bool {
        if self.assigned.load(Ordering::Relaxed) > 0 {
            self.last_assigned = now;
            self.baseline = None;
            return false;
        }
        let baseline = *self.baseline.get_or_insert(progress);
        if progress.committed != baseline.committed || progress.unread == 0 {
            // Someone consumes, or there is nothing to consume: not stuck.
            self.baseline = Some(progress);
            self.last_assigned = now;
            return false;
        }
        now.duration_since(self.last_assigned) >= self.stall_timeout
    }

    pub fn rejoined(&mut self, now: Instant) {
        self.last_assigned = now;
        self.baseline = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watchdog(assigned: usize) -> (Watchdog, Arc<AtomicUsize>) {
        let shared = Arc::new(AtomicUsize::new(assigned));
        (
            Watchdog::new(shared.clone(), Duration::from_secs(10)),
            shared,
        )
    }

    const STUCK: GroupProgress = GroupProgress {
        committed: 100,
        unread: 40,
    };

    #[tokio::test(start_paused = true)]
    async fn a_member_left_without_partitions_rejoins_when_nobody_consumes() {
        let (mut w, _) = watchdog(0);
        let start = Instant::now();
        assert!(w.due(start));
        assert!(!w.stalled(STUCK, start), "not before the stall timeout");
        assert!(!w.stalled(STUCK, start + Duration::from_secs(9)));
        assert!(w.stalled(STUCK, start + Duration::from_secs(10)));
        w.rejoined(start + Duration::from_secs(10));
        assert!(
            !w.stalled(STUCK, start + Duration::from_secs(11)),
            "a fresh stretch after rejoining"
        );
        assert!(w.stalled(STUCK, start + Duration::from_secs(21)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spare_member_stays_while_another_consumes() {
        let (mut w, _) = watchdog(0);
        let start = Instant::now();
        for s in 0..60 {
            let progress = GroupProgress {
                committed: 100 + s,
                unread: 40,
            };
            assert!(!w.stalled(progress, start + Duration::from_secs(s as u64)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_to_read_is_not_a_stall() {
        let (mut w, _) = watchdog(0);
        let start = Instant::now();
        let idle = GroupProgress {
            committed: 100,
            unread: 0,
        };
        for s in 0..60 {
            assert!(!w.stalled(idle, start + Duration::from_secs(s)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_with_partitions_is_never_stalled() {
        let (mut w, assigned) = watchdog(2);
        let start = Instant::now();
        assert!(!w.due(start));
        assert!(!w.stalled(STUCK, start + Duration::from_secs(60)));
        assigned.store(0, Ordering::Relaxed);
        assert!(w.due(start + Duration::from_secs(61)));
        assert!(!w.stalled(STUCK, start + Duration::from_secs(61)));
        assert!(w.stalled(STUCK, start + Duration::from_secs(71)));
    }
}
