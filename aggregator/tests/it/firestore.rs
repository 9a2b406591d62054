//! Kafka → aggregator binary → Firestore emulator.

use std::time::Duration;

use uuid::Uuid;

use crate::common::{
    create_topic, firestore, producer, publish, wait_for_messages, AggregatorProcess, Conversation,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_become_batch_documents_and_bursts_cost_few_writes() {
    let (Some(_emulator), Some(broker)) = (testkit::firestore_emulator(), testkit::Broker::start())
    else {
        return;
    };
    let project = format!("test-{}", Uuid::new_v4().simple());
    create_topic(&broker.brokers(), 3).await;
    let data = tempfile::tempdir().expect("tempdir");
    let aggregator = AggregatorProcess::start(&broker.brokers(), &project, data.path(), 1000);
    let kafka = producer(&broker.brokers());
    let db = firestore(&project).await;

    // A conversation: two turns of alice, one of bob.
    let mut chat = Conversation::new();
    let script = [(0, "hi"), (0, "are you there?"), (1, "yes"), (0, "great")];
    let mut sent = Vec::new();
    for (who, text) in script {
        let e = chat.say(who, 500, text);
        publish(&kafka, &e).await;
        sent.push(e);
    }
    let docs = wait_for_messages(&db, chat.chat_id, sent.len(), Duration::from_secs(30)).await;
    assert_eq!(docs.len(), 3, "{docs:#?}");
    let first = &docs[&1];
    assert_eq!(
        first.id,
        sent[0].id.to_string(),
        "batch id = first message id"
    );
    assert_eq!(first.sender_id, chat.users[0].to_string());
    assert_eq!(first.count, 2);
    assert!(first.closed);
    assert_eq!(
        first.messages.iter().map(|m| &*m.text).collect::<Vec<_>>(),
        ["hi", "are you there?"]
    );
    assert_eq!(first.first_message_id, sent[0].id.to_string());
    assert_eq!(first.last_message_id, sent[1].id.to_string());
    assert!(first.expire_at > first.last_at);
    let mut participants = first.members.clone();
    participants.sort();
    let mut expected: Vec<String> = chat.users.iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(participants, expected);
    assert_eq!(
        (docs[&2].sender_id.clone(), docs[&2].count, docs[&2].closed),
        (chat.users[1].to_string(), 1, true)
    );
    assert_eq!((docs[&3].count, docs[&3].closed), (1, false));
    let summary: Option<aggregator::sink::firestore::FsSummary> = db
        .fluent()
        .select()
        .by_id_in("chats")
        .obj()
        .one(chat.chat_id.to_string())
        .await
        .expect("summary");
    let summary = summary.expect("chat summary document");
    assert_eq!(
        (summary.last_batch_seq, summary.last_batch_id.clone()),
        (3, sent[3].id.to_string())
    );

    // A burst: 50 messages from one sender within a second.
    let mut burst = Conversation::new();
    let before = aggregator
        .metric("aggregator_documents_written_total")
        .await;
    let events: Vec<_> = (0..50)
        .map(|i| burst.say(0, 15, &format!("burst {i}")))
        .collect();
    let started = std::time::Instant::now();
    for e in &events {
        publish(&kafka, e).await;
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    let docs = wait_for_messages(&db, burst.chat_id, 50, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // let the last flush land
    let written = aggregator
        .metric("aggregator_documents_written_total")
        .await
        - before;
    eprintln!(
        "burst of 50 messages: {written} document writes, {} batch documents",
        docs.len()
    );
    assert!(
        written <= 8.0,
        "{written} document writes for a 50-message burst"
    );
    assert_eq!(docs.values().map(|b| b.messages.len()).sum::<usize>(), 50);
    assert!(aggregator.stop().success(), "graceful shutdown");
}

/// A group in Firestore: its timeline events are batches of their own, and
/// its chat document (which the rules read) follows its members at once and
/// carries read receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_chat_document_follows_its_members_and_receipts() {
    use chat_events::{ChatEventType, Event, ReadUpdated};
    let (Some(_emulator), Some(broker)) = (testkit::firestore_emulator(), testkit::Broker::start())
    else {
        return;
    };
    let project = format!("group-{}", Uuid::new_v4().simple());
    create_topic(&broker.brokers(), 2).await;
    let data = tempfile::tempdir().expect("tempdir");
    let _aggregator = AggregatorProcess::start(&broker.brokers(), &project, data.path(), 1000);
    let kafka = producer(&broker.brokers());
    let db = firestore(&project).await;
    let summary = |chat: Uuid| {
        let db = db.clone();
        async move {
            let doc: Option<aggregator::sink::firestore::FsSummary> = db
                .fluent()
                .select()
                .by_id_in("chats")
                .obj()
                .one(chat.to_string())
                .await
                .expect("summary");
            doc
        }
    };

    let (mut chat, created) = Conversation::group();
    publish(&kafka, created.clone()).await;
    let hello = chat.say(0, 100, "hello group");
    publish(&kafka, &hello).await;
    let added = chat.event(ChatEventType::MemberAdded, 100);
    let newcomer = added.user_id.expect("added").uuid();
    publish(&kafka, added).await;
    publish(
        &kafka,
        Event::Read(ReadUpdated {
            v: 1,
            kind: chat_events::event::READ_TYPE.into(),
            chat_id: chat.chat_id.into(),
            user_id: chat.users[1].into(),
            last_read_id: hello.id,
            at: hello.sent_at,
        }),
    )
    .await;
    let docs = wait_for_messages(&db, chat.chat_id, 3, Duration::from_secs(30)).await;
    let types: Vec<&str> = docs.values().map(|b| b.messages[0].kind.as_str()).collect();
    assert_eq!(types, ["chat_created", "message", "member_added"]);
    assert!(docs.values().all(|b| b.chat_kind == "group"));
    assert_eq!(docs[&3].messages[0].user_id, Some(newcomer.to_string()));
    let all: Vec<String> = [chat.users[0], chat.users[1], newcomer]
        .iter()
        .map(Uuid::to_string)
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = summary(chat.chat_id).await;
        if let Some(s) = s.filter(|s| s.members == all && !s.read.is_empty()) {
            assert_eq!(
                s.read.get(&chat.users[1].to_string()),
                Some(&hello.id.to_string())
            );
            assert_eq!(s.title, created.title);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the chat document never listed the newcomer and the receipt"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The removal reaches the chat document without waiting for the flush
    // interval, even right after another write.
    let removed = chat.event(ChatEventType::MemberRemoved, 100);
    assert_eq!(removed.user_id.map(|u| u.uuid()), Some(newcomer));
    let started = std::time::Instant::now();
    publish(&kafka, removed).await;
    let remaining: Vec<String> = [chat.users[0], chat.users[1]]
        .iter()
        .map(Uuid::to_string)
        .collect();
    loop {
        if summary(chat.chat_id)
            .await
            .is_some_and(|s| s.members == remaining)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the removed member is still listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "the chat document dropped the removed member {:?} after the publish",
        started.elapsed()
    );
}
