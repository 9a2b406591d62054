use std::collections::BTreeMap;
use std::time::Duration;

use aggregator::sink::firestore::FsBatch;
use chat_events::{ChatEvent, ChatEventType, ChatKind, Event, MessageCreated, TimeUuidGenerator};
use firestore::FirestoreDb;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use time::OffsetDateTime;
use uuid::Uuid;

pub const TOPIC: &str = "chat.messages";
/// Consumer session timeout of the aggregators the tests start.
pub const SESSION_TIMEOUT_MS: u64 = 6000;
/// How long they wait without partitions (while records go unread) before
/// rejoining the group. `max.poll.interval.ms` (librdkafka's rebalance
/// timeout) keeps its production default of 300 s, as in a deployment.
pub const STALL_TIMEOUT_MS: u64 = 10_000;

/// A Kafka source in consumer group `group`, as the tests configure it.
pub fn kafka_source(brokers: &str, group: &str) -> aggregator::source::kafka::KafkaSource {
    aggregator::source::kafka::KafkaSource::connect(
        &aggregator::source::kafka::KafkaSourceSettings {
            brokers: brokers.into(),
            topic: TOPIC.into(),
            group_id: group.into(),
            session_timeout: Duration::from_secs(6),
            max_poll_interval: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(30),
        },
    )
    .expect("source")
}

/// The next record's position (a decodable event), waiting at most 30 s.
pub async fn next_position(
    source: &mut dyn aggregator::source::Source,
) -> aggregator::batcher::Position {
    let delivery = tokio::time::timeout(Duration::from_secs(30), source.next())
        .await
        .expect("a record arrives")
        .expect("record");
    let aggregator::source::Delivery::Event(_, position) = delivery else {
        panic!("undecodable record")
    };
    position
}

/// A broker of its own with the test topic, or `None` (the test skips).
pub async fn broker_with_topic(partitions: i32) -> Option<(testkit::Broker, String)> {
    let broker = testkit::Broker::start()?;
    let brokers = broker.brokers();
    create_topic(&brokers, partitions).await;
    Some((broker, brokers))
}

pub async fn create_topic(brokers: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin");
    let results = admin
        .create_topics(
            [&NewTopic::new(
                TOPIC,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic");
    for r in results {
        r.expect("topic created");
    }
}

pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        // One record per batch: Tansu 0.6's fetch from an offset inside a
        // stored batch skips the rest of that batch, so an aggregator that
        // resumes from a committed offset there would miss records (seen:
        // one message missing from the crash test). chat-service's
        // --kafka-batch-num-messages says the same.
        .set("batch.num.messages", "1")
        .create()
        .expect("producer")
}

/// Publishes one event the way chat-service does: key = chat id, JSON value.
/// Puts one event (a message, or any other) on the topic, keyed by its chat.
pub async fn publish(producer: &FutureProducer, event: impl Into<Event>) {
    let event: Event = event.into();
    let key = event.chat_id().to_string();
    let payload = event.encode();
    producer
        .send(
            FutureRecord::to(TOPIC).key(&key).payload(&payload),
            Duration::from_secs(5),
        )
        .await
        .expect("delivered");
}

/// A chat between two fresh users (direct, or a group they are the first
/// members of) that writes its own events.
pub struct Conversation {
    pub chat_id: Uuid,
    pub users: [Uuid; 2],
    /// A group's members; empty for a direct chat.
    members: Vec<Uuid>,
    ids: TimeUuidGenerator,
    clock: OffsetDateTime,
}

impl Conversation {
    pub fn new() -> Self {
        let users = [Uuid::new_v4(), Uuid::new_v4()];
        Self {
            chat_id: chat_events::chat_id(users[0].into(), users[1].into()).uuid(),
            users,
            members: Vec::new(),
            ids: TimeUuidGenerator::new(),
            clock: OffsetDateTime::now_utc(),
        }
    }

    /// A group of two fresh users, and its `chat.created` event.
    pub fn group() -> (Self, ChatEvent) {
        let mut chat = Self::new();
        chat.chat_id = Uuid::new_v4();
        chat.members = chat.users.to_vec();
        let created = chat.event(ChatEventType::ChatCreated, 0);
        (chat, created)
    }

    /// The next message from participant `who`, `after_ms` after the last.
    pub fn say(&mut self, who: usize, after_ms: i64, text: &str) -> MessageCreated {
        self.clock += time::Duration::milliseconds(after_ms);
        let recipient = self.members.is_empty().then(|| self.users[1 - who].into());
        MessageCreated::new(
            self.ids.next().uuid(),
            self.chat_id.into(),
            self.users[who].into(),
            recipient,
            text.into(),
            self.clock,
        )
    }

    /// A group's next timeline event by its first member, `after_ms` after
    /// the last item: a new member joins (`MemberAdded`), the newest member
    /// is removed (`MemberRemoved`), the title changes (`ChatRenamed`), or
    /// the group begins (`ChatCreated`).
    pub fn event(&mut self, kind: ChatEventType, after_ms: i64) -> ChatEvent {
        self.clock += time::Duration::milliseconds(after_ms);
        let user = match kind {
            ChatEventType::MemberAdded => {
                let user = Uuid::new_v4();
                self.members.push(user);
                Some(user)
            }
            ChatEventType::MemberRemoved => self.members.pop(),
            _ => None,
        };
        let id = self.ids.next().uuid();
        ChatEvent {
            v: chat_events::event::VERSION,
            kind,
            id,
            chat_id: self.chat_id.into(),
            chat_kind: ChatKind::Group,
            actor_id: self.users[0].into(),
            user_id: user.map(Into::into),
            title: matches!(
                kind,
                ChatEventType::ChatCreated | ChatEventType::ChatRenamed
            )
            .then(|| format!("title {id}")),
            members: self.members.iter().copied().map(Into::into).collect(),
            at: self.clock,
        }
    }
}

/// The aggregator binary, consuming Kafka into the Firestore emulator.
pub struct AggregatorProcess {
    process: testkit::Process,
    pub port: u16,
}

impl AggregatorProcess {
    pub fn start(brokers: &str, project: &str, data_dir: &std::path::Path, flush_ms: u64) -> Self {
        Self::start_with_session(brokers, project, data_dir, flush_ms, SESSION_TIMEOUT_MS)
    }

    /// [`Self::start`] with another consumer session timeout.
    pub fn start_with_session(
        brokers: &str,
        project: &str,
        data_dir: &std::path::Path,
        flush_ms: u64,
        session_timeout_ms: u64,
    ) -> Self {
        let port = testkit::free_port();
        let mut command =
            testkit::service_command(env!("CARGO_BIN_EXE_aggregator"), port, data_dir);
        command
            .args(["--source", "kafka", "--sink", "firestore"])
            .args([
                "--kafka-brokers",
                brokers,
                "--kafka-topic",
                TOPIC,
                "--kafka-group-id",
                "aggregator-test",
            ])
            .args([
                "--kafka-session-timeout-ms",
                &session_timeout_ms.to_string(),
            ])
            .args(["--kafka-stall-timeout-ms", &STALL_TIMEOUT_MS.to_string()])
            .args(["--firestore-project-id", project])
            .args(["--flush-interval-ms", &flush_ms.to_string()])
            .args(["--batch-max-count", "40"])
            // Logs go to stdout: the test's captured output, shown when it
            // fails (group changes are logged at info).
            .env("RUST_LOG", "warn,aggregator=info")
            .stdout(std::process::Stdio::inherit());
        Self {
            process: testkit::Process::spawn("aggregator", &mut command, Some(port)),
            port,
        }
    }

    /// SIGKILL: no flush, no commit.
    pub fn kill(mut self) {
        self.process.kill();
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.process.stop()
    }

    /// The status of `GET /readyz`.
    pub async fn readiness(&self) -> u16 {
        reqwest::get(format!("http://127.0.0.1:{}/readyz", self.port))
            .await
            .expect("readyz")
            .status()
            .as_u16()
    }

    /// A counter from `/metrics` (0 when not yet recorded).
    pub async fn metric(&self, name: &str) -> f64 {
        let base = format!("http://127.0.0.1:{}", self.port);
        testkit::metric_value(&testkit::scrape(&reqwest::Client::new(), &base).await, name)
    }
}

pub async fn firestore(project: &str) -> FirestoreDb {
    FirestoreDb::new(project).await.expect("firestore client")
}

/// A chat's batch documents by `seq`.
pub async fn batches(db: &FirestoreDb, chat: Uuid) -> BTreeMap<i64, FsBatch> {
    let parent = db.parent_path("chats", chat.to_string()).expect("path");
    let docs: Vec<FsBatch> = db
        .fluent()
        .select()
        .from("batches")
        .parent(&parent)
        .obj()
        .query()
        .await
        .expect("query batches");
    let mut by_seq = BTreeMap::new();
    for d in docs {
        if let Some(other) = by_seq.insert(d.seq, d) {
            let d = &by_seq[&other.seq];
            panic!(
                "chat {chat}: batch documents {} ({} messages) and {} ({} messages) share seq {}",
                other.id, other.count, d.id, d.count, d.seq
            );
        }
    }
    by_seq
}

/// Every event on the topic, per chat in log order (partition by
/// partition, from the beginning to the high watermark).
pub fn log_order(brokers: &str) -> std::collections::HashMap<Uuid, Vec<Uuid>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("log-reader-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(TOPIC), timeout)
        .expect("metadata");
    let mut order: std::collections::HashMap<Uuid, Vec<Uuid>> = Default::default();
    for p in metadata.topics()[0].partitions() {
        let (low, high) = consumer
            .fetch_watermarks(TOPIC, p.id(), timeout)
            .expect("watermarks");
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, p.id(), Offset::Offset(low))
            .expect("partition");
        consumer.assign(&tpl).expect("assign");
        let mut next = low;
        while next < high {
            let record = consumer
                .poll(timeout)
                .expect("a record before the high watermark")
                .expect("record");
            next = record.offset() + 1;
            let event = Event::decode(record.payload().unwrap_or_default()).expect("an event");
            let id = match &event {
                Event::Message(m) => m.id,
                Event::Chat(e) => e.id,
                Event::Read(_) => continue,
            };
            order.entry(event.chat_id().uuid()).or_default().push(id);
        }
    }
    order
}

/// Waits until the chat's documents hold `want` messages in all.
pub async fn wait_for_messages(
    db: &FirestoreDb,
    chat: Uuid,
    want: usize,
    limit: Duration,
) -> BTreeMap<i64, FsBatch> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let docs = batches(db, chat).await;
        let have: usize = docs.values().map(|b| b.messages.len()).sum();
        if have >= want || tokio::time::Instant::now() >= deadline {
            return docs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
