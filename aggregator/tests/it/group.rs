//! Consumer-group membership: an aggregator restarted at once after a
//! SIGKILL of the member that held every partition gets them back by itself,
//! and is not ready until it does.

use std::time::Duration;

use uuid::Uuid;

use crate::common::{
    batches, create_topic, firestore, producer, publish, AggregatorProcess, Conversation,
    STALL_TIMEOUT_MS,
};

const CHATS: usize = 12;
/// The production default: the settings under which the stall was seen.
const SESSION_TIMEOUT_MS: u64 = 10_000;
const PARTITIONS: i32 = 6;

/// Messages held by the chats' batch documents, in all.
async fn stored(db: &firestore::FirestoreDb, chats: &[Conversation]) -> usize {
    let mut total = 0;
    for chat in chats {
        total += batches(db, chat.chat_id)
            .await
            .values()
            .map(|b| b.messages.len())
            .sum::<usize>();
    }
    total
}

async fn wait_for(
    db: &firestore::FirestoreDb,
    chats: &[Conversation],
    want: usize,
    limit: Duration,
) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let have = stored(db, chats).await;
        if have >= want || tokio::time::Instant::now() >= deadline {
            return have;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_at_once_after_sigkill_gets_the_partitions_back() {
    let (Some(_emulator), Some(broker)) = (testkit::firestore_emulator(), testkit::Broker::start())
    else {
        return;
    };
    let project = format!("group-{}", Uuid::new_v4().simple());
    create_topic(&broker.brokers(), PARTITIONS).await;
    let data = tempfile::tempdir().expect("tempdir");
    let db = firestore(&project).await;
    let kafka = producer(&broker.brokers());
    let mut chats: Vec<Conversation> = (0..CHATS).map(|_| Conversation::new()).collect();

    // A settled member holds every partition and has consumed everything.
    let start = || {
        AggregatorProcess::start_with_session(
            &broker.brokers(),
            &project,
            data.path(),
            200,
            SESSION_TIMEOUT_MS,
        )
    };
    let first = start();
    for (i, chat) in chats.iter_mut().enumerate() {
        publish(&kafka, &chat.say(i % 2, 100, "before")).await;
    }
    assert_eq!(
        wait_for(&db, &chats, CHATS, Duration::from_secs(60)).await,
        CHATS,
        "the first member consumes"
    );
    assert_eq!(
        first.readiness().await,
        200,
        "ready while it holds partitions"
    );

    // Killed, and replaced at once: the new member joins while the dead one
    // still counts in the group.
    first.kill();
    let second = start();
    for (i, chat) in chats.iter_mut().enumerate() {
        publish(&kafka, &chat.say(i % 2, 100, "after")).await;
    }
    // Without a rebalance the dead member keeps every partition (Tansu), or
    // the group waits for its session to expire (Apache Kafka); either way
    // the new member must be consuming well within the stall timeout plus
    // a rebalance.
    let limit =
        Duration::from_millis(STALL_TIMEOUT_MS + SESSION_TIMEOUT_MS) + Duration::from_secs(20);
    let have = wait_for(&db, &chats, 2 * CHATS, limit).await;
    eprintln!(
        "the new member rejoined the group {} time(s)",
        second.metric("aggregator_group_rejoins_total").await as u64
    );
    assert_eq!(
        have,
        2 * CHATS,
        "the new member consumes what was sent after the crash"
    );
    assert_eq!(second.readiness().await, 200, "and says it is ready");
    assert_eq!(
        second.metric("aggregator_assigned_partitions").await,
        f64::from(PARTITIONS)
    );
    assert!(second.stop().success());
}
