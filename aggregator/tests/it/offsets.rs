//! The Kafka source against the real broker: what it commits is exactly
//! what the pipeline says is written, never a record beyond it. (A source
//! that committed everything it delivered would lose the records that were
//! applied but not yet written whenever the process died; the crash tests
//! only catch that when a kill lands in that window.)

use std::collections::BTreeMap;
use std::time::Duration;

use aggregator::source::kafka::KafkaSource;
use aggregator::source::Source;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::common::{producer, publish, Conversation, TOPIC};

const GROUP: &str = "offsets-test";

/// The group's committed offset of partition 0, read by another client.
fn committed(brokers: &str) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", GROUP)
        .create()
        .expect("consumer");
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(TOPIC, 0);
    let offsets = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .expect("committed offsets");
    match offsets.elements_for_topic(TOPIC)[0].offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// The next record's offset.
async fn next_offset(source: &mut KafkaSource) -> i64 {
    crate::common::next_position(source).await.offset
}

fn connect(brokers: &str) -> KafkaSource {
    crate::common::kafka_source(brokers, GROUP)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_written_records_are_committed() {
    let Some((_broker, brokers)) = crate::common::broker_with_topic(1).await else {
        return;
    };
    let kafka = producer(&brokers);
    let mut chat = Conversation::new();
    for i in 0..10 {
        publish(&kafka, &chat.say(i % 2, 100, "hi")).await;
    }

    let mut source = connect(&brokers);
    let mut offsets = Vec::new();
    while offsets.len() < 10 {
        offsets.push(next_offset(&mut source).await);
    }
    assert_eq!(offsets, (0..10).collect::<Vec<i64>>());

    // Records from offset 4 on are applied but not yet written.
    let uncovered = BTreeMap::from([(0, 4)]);
    source.commit(&uncovered).await.expect("commit");
    source.close(&uncovered).await.expect("close");
    drop(source);
    assert_eq!(
        committed(&brokers),
        Some(4),
        "committed up to the first unwritten record, not past it"
    );

    // A restart resumes there; once everything is written, all is committed.
    let mut source = connect(&brokers);
    assert_eq!(
        next_offset(&mut source).await,
        4,
        "the unwritten records come again"
    );
    for _ in 5..10 {
        source.next().await.expect("record");
    }
    source.close(&BTreeMap::new()).await.expect("close");
    drop(source);
    assert_eq!(committed(&brokers), Some(10));
}
