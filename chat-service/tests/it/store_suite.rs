//! One suite for every `MessageStore`: the embedded SQLite store always, and
//! Cassandra/ScyllaDB when `TEST_CQL_CONTACT_POINTS` names a node (each run
//! in a fresh keyspace). The output says plainly when the CQL run is skipped.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chat_events::{ChatId, TimeUuid, TimeUuidGenerator, UserId};
use chat_service::domain::{ClientMessageId, MessageText};
use chat_service::store::cql::{CqlSettings, CqlStore};
use chat_service::store::sqlite::SqliteStore;
use chat_service::store::{
    Added, Changed, ChatCursor, ChatEventType, ChatKind, ChatsPage, Inserted, Item, Member,
    Message, MessageStore, NewChat, ReadMark, Role, StoreError, TimelineEvent,
};
use scylla::statement::Consistency;
use uuid::Uuid;

type Store = Arc<dyn MessageStore>;

async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _outbox) = SqliteStore::open_with_outbox(dir.path(), Default::default())
        .await
        .expect("open");
    (Arc::new(store), dir)
}

async fn cql() -> Option<Store> {
    let Ok(points) = std::env::var("TEST_CQL_CONTACT_POINTS") else {
        eprintln!("SKIPPED the CQL store suite: TEST_CQL_CONTACT_POINTS is not set (no Cassandra/ScyllaDB here)");
        return None;
    };
    let settings = CqlSettings {
        contact_points: points.split(',').map(str::to_owned).collect(),
        keyspace: format!("chat_test_{}", Uuid::new_v4().simple()),
        replication_factor: 1,
        consistency: Consistency::LocalQuorum,
        bucket: Duration::from_secs(3600),
        username: std::env::var("TEST_CQL_USERNAME").ok(),
        password: std::env::var("TEST_CQL_PASSWORD").ok(),
    };
    Some(Arc::new(
        CqlStore::connect(&settings).await.expect("connect to CQL"),
    ))
}

macro_rules! store_suite {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = super::sqlite().await;
                    super::$name(store).await;
                }
            )*
        }
        mod cql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(store) = super::cql().await {
                        super::$name(store).await;
                    }
                }
            )*
        }
    };
}

store_suite!(
    chats_are_created_once_and_listed_by_activity,
    history_is_newest_first_and_strictly_before,
    paging_a_timeline_of_messages_and_events_in_the_same_milliseconds,
    client_ids_deduplicate_even_concurrently,
    groups_keep_their_member_limit_under_concurrent_adds,
    roles_and_the_owner_leaving,
    removed_members_are_refused_even_while_sending,
    read_horizons_never_move_back_and_unread_counts_are_exact,
    replies_must_name_a_message_of_the_chat,
    a_users_chats_page_without_skipping_or_repeating,
);

/// A fresh random id of either kind.
fn new_id<T: From<Uuid>>() -> T {
    Uuid::new_v4().into()
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn named(id: UserId) -> (UserId, String) {
    (id, format!("user-{}", id.uuid().simple()))
}

/// Creates the direct chat of `a` and `b`, `ago_ms` in the past.
async fn direct(
    store: &Store,
    ids: &TimeUuidGenerator,
    a: UserId,
    b: UserId,
    ago_ms: i64,
) -> ChatId {
    let (new, log) = NewChat::direct(named(a), named(b), now_ms() - ago_ms, ids.next());
    let id = new.chat.id;
    assert!(store.create_chat(new, log).await.expect("create"));
    id
}

/// Creates a group owned by `owner` with `others`.
async fn group(store: &Store, ids: &TimeUuidGenerator, owner: UserId, others: &[UserId]) -> ChatId {
    let id: ChatId = new_id();
    let (new, log) = NewChat::group(
        id,
        "team".into(),
        named(owner),
        others.iter().copied().map(named).collect(),
        now_ms(),
        ids.next(),
    );
    assert!(store.create_chat(new, log).await.expect("create group"));
    id
}

fn message(chat: ChatId, id: TimeUuid, from: UserId, client: Option<&str>) -> Message {
    Message {
        id,
        chat_id: chat,
        sender_id: from,
        text: MessageText::parse(format!("text of {id}")).expect("text"),
        client_message_id: client.map(|c| ClientMessageId::parse(c.into()).expect("client id")),
        reply_to: None,
    }
}

async fn insert(store: &Store, m: &Message) -> Result<Inserted, StoreError> {
    let event = m.event(ChatKind::Group, None).into();
    store.insert_message(m.clone(), event).await
}

/// Sends a message now; returns it.
async fn say(store: &Store, ids: &TimeUuidGenerator, chat: ChatId, from: UserId) -> Message {
    let m = message(chat, ids.next(), from, None);
    assert!(matches!(
        insert(store, &m).await.expect("insert"),
        Inserted::New(_)
    ));
    m
}

fn event(
    ids: &TimeUuidGenerator,
    chat: ChatId,
    kind: ChatEventType,
    actor: UserId,
    user: Option<UserId>,
) -> TimelineEvent {
    TimelineEvent {
        id: ids.next(),
        chat_id: chat,
        kind,
        actor_id: actor,
        user_id: user,
        title: (kind == ChatEventType::ChatRenamed).then(|| "renamed".to_owned()),
        members: Vec::new(),
    }
}

fn member(id: UserId) -> Member {
    let (id, username) = named(id);
    Member {
        id,
        username,
        role: Role::Member,
        joined_at: now_ms(),
        last_read_id: None,
    }
}

fn item_ids(items: &[Item]) -> Vec<TimeUuid> {
    items.iter().map(Item::id).collect()
}

async fn unread(store: &Store, user: UserId, chat: ChatId) -> u64 {
    store
        .chat_summary(user, chat)
        .await
        .expect("summary")
        .expect("a member")
        .unread
}

async fn chats_are_created_once_and_listed_by_activity(store: Store) {
    let (a, b, c) = (new_id(), new_id(), new_id());
    let ids = TimeUuidGenerator::new();
    // Created in the past, so a message sent now is clearly the latest activity.
    let ab = direct(&store, &ids, a, b, 2000).await;
    let (again, log) = NewChat::direct(named(a), named(b), now_ms(), ids.next());
    assert!(!store.create_chat(again, log).await.expect("create again"));
    let stored = store.chat(ab).await.expect("get").expect("stored");
    assert_eq!(
        (stored.kind, stored.member_count, stored.title),
        (ChatKind::Direct, 2, None)
    );
    assert_eq!(store.chat(new_id()).await.expect("get"), None);

    let ac = direct(&store, &ids, a, c, 1000).await;
    let listed: Vec<ChatId> = store
        .chats_of(a, ChatsPage::ALL)
        .await
        .expect("list")
        .iter()
        .map(|s| s.chat.id)
        .collect();
    assert_eq!(listed, [ac, ab]);

    let mut m = message(ab, ids.next(), b, None);
    m.text = MessageText::parse("é".repeat(150)).expect("text");
    insert(&store, &m).await.expect("insert");
    let summaries = store.chats_of(a, ChatsPage::ALL).await.expect("list");
    assert_eq!(summaries[0].chat.id, ab);
    let last = summaries[0].last_message.clone().expect("last message");
    assert_eq!((last.id, last.sender_id), (m.id, b));
    assert_eq!(last.preview, "é".repeat(100));
    assert_eq!(summaries[0].other.as_ref().map(|o| o.id), Some(b));
    assert_eq!(summaries[0].unread, 1);
    assert_eq!(
        store.chats_of(b, ChatsPage::ALL).await.expect("list").len(),
        1
    );
    // One chat alone, as each member sees it; nobody else sees it.
    assert_eq!(
        store.chat_summary(a, ab).await.expect("one"),
        Some(summaries[0].clone())
    );
    let for_b = store.chat_summary(b, ab).await.expect("one").expect("b's");
    assert_eq!((for_b.unread, for_b.other.map(|o| o.id)), (0, Some(a)));
    assert_eq!(store.chat_summary(c, ab).await.expect("one"), None);
    assert_eq!(store.membership(ab, c).await.expect("membership"), None);
    assert_eq!(store.chat_summary(a, new_id()).await.expect("one"), None);
    assert!(store
        .chats_of(new_id(), ChatsPage::ALL)
        .await
        .expect("list")
        .is_empty());
    // A direct chat's timeline holds only messages.
    assert_eq!(
        item_ids(&store.history(ab, None, 10).await.expect("history")),
        [m.id]
    );
}

async fn history_is_newest_first_and_strictly_before(store: Store) {
    let (a, b) = (new_id(), new_id());
    let ids = TimeUuidGenerator::new();
    let chat = direct(&store, &ids, a, b, 0).await;
    let mut all = Vec::new();
    for i in 0..5 {
        all.push(
            say(&store, &ids, chat, if i % 2 == 0 { a } else { b })
                .await
                .id,
        );
    }
    let newest_first: Vec<TimeUuid> = all.iter().rev().copied().collect();
    let history = |before, n| {
        let store = store.clone();
        async move { item_ids(&store.history(chat, before, n).await.expect("history")) }
    };
    assert_eq!(history(None, 10).await, newest_first);
    assert_eq!(history(None, 2).await, newest_first[..2]);
    assert_eq!(history(Some(all[3]), 10).await, newest_first[2..]);
    assert!(history(Some(all[0]), 10).await.is_empty());
    let items = store.history(chat, None, 1).await.expect("history");
    assert_eq!(items[0].message().map(|m| m.sender_id), Some(a));
    assert!(store
        .history(new_id(), None, 10)
        .await
        .expect("history")
        .is_empty());
    // Catch-up: oldest first, strictly after.
    let after = |from, n| {
        let store = store.clone();
        async move { item_ids(&store.catch_up(chat, from, n).await.expect("catch up")) }
    };
    assert_eq!(after(all[1], 10).await, all[2..]);
    assert_eq!(after(all[1], 2).await, all[2..4]);
    assert!(after(all[4], 10).await.is_empty());
}

async fn paging_a_timeline_of_messages_and_events_in_the_same_milliseconds(store: Store) {
    let (owner, other) = (new_id(), new_id());
    let ids = TimeUuidGenerator::new();
    let chat = group(&store, &ids, owner, &[other]).await;
    let mut expected: Vec<TimeUuid> =
        item_ids(&store.history(chat, None, 10).await.expect("history"));
    assert_eq!(expected.len(), 1, "chat_created");
    for i in 0..600 {
        if i % 7 == 3 {
            let e = event(&ids, chat, ChatEventType::ChatRenamed, owner, None);
            expected.push(e.id);
            assert!(matches!(
                store.rename(e).await.expect("rename"),
                Changed::Done(_)
            ));
        } else {
            let m = message(
                chat,
                ids.next(),
                if i % 2 == 0 { owner } else { other },
                None,
            );
            expected.push(m.id);
            insert(&store, &m).await.expect("insert");
        }
    }
    let per_ms = expected
        .iter()
        .map(|id| id.unix_millis())
        .collect::<HashSet<_>>()
        .len();
    assert!(
        per_ms < 300,
        "ids should crowd into few milliseconds, got {per_ms} distinct"
    );
    let newest_first: Vec<TimeUuid> = expected.iter().rev().copied().collect();
    for quantity in 1..=100 {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .history(chat, before, quantity)
                .await
                .expect("history");
            seen.extend(item_ids(&page));
            if page.len() < quantity {
                break;
            }
            before = page.last().map(Item::id);
        }
        assert_eq!(seen, newest_first, "history, quantity {quantity}");
        let mut seen = vec![expected[0]];
        let mut after = expected[0];
        loop {
            let page = store
                .catch_up(chat, after, quantity)
                .await
                .expect("catch up");
            seen.extend(item_ids(&page));
            if page.len() < quantity {
                break;
            }
            after = page.last().map(Item::id).expect("a full page");
        }
        assert_eq!(seen, expected, "catch-up, quantity {quantity}");
    }
}

async fn client_ids_deduplicate_even_concurrently(store: Store) {
    let (a, b) = (new_id(), new_id());
    let ids = Arc::new(TimeUuidGenerator::new());
    let chat = direct(&store, &ids, a, b, 0).await;
    let first = message(chat, ids.next(), a, Some("k1"));
    assert_eq!(
        insert(&store, &first).await.expect("insert"),
        Inserted::New(first.clone())
    );
    let again = message(chat, ids.next(), a, Some("k1"));
    assert_eq!(
        insert(&store, &again).await.expect("insert"),
        Inserted::Existing(first.clone())
    );

    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, ids) = (store.clone(), ids.clone());
            tokio::spawn(
                async move { insert(&store, &message(chat, ids.next(), b, Some("k2"))).await },
            )
        })
        .collect();
    let mut new = 0;
    let mut winners = HashSet::new();
    for t in tasks {
        let outcome = t.await.expect("join").expect("insert");
        if matches!(outcome, Inserted::New(_)) {
            new += 1;
        }
        winners.insert(outcome.message().id);
    }
    assert_eq!((new, winners.len()), (1, 1));
    let history = store.history(chat, None, 100).await.expect("history");
    assert_eq!(history.len(), 2, "{history:?}");
}

async fn groups_keep_their_member_limit_under_concurrent_adds(store: Store) {
    let (owner, first) = (new_id(), new_id());
    let ids = Arc::new(TimeUuidGenerator::new());
    let chat = group(&store, &ids, owner, &[first]).await;
    let stored = store.chat(chat).await.expect("chat").expect("stored");
    assert_eq!(
        (stored.kind, stored.title.as_deref(), stored.member_count),
        (ChatKind::Group, Some("team"), 2)
    );
    let members = store.members(chat).await.expect("members");
    assert_eq!(
        members.iter().map(|m| (m.id, m.role)).collect::<Vec<_>>(),
        [(owner, Role::Owner), (first, Role::Member)]
    );

    const LIMIT: usize = 10;
    let candidates: Vec<UserId> = (0..20).map(|_| new_id()).collect();
    let tasks: Vec<_> = candidates
        .iter()
        .map(|&user| {
            let (store, ids) = (store.clone(), ids.clone());
            tokio::spawn(async move {
                let e = event(&ids, chat, ChatEventType::MemberAdded, owner, Some(user));
                store.add_member(member(user), e, LIMIT).await
            })
        })
        .collect();
    let mut added = 0;
    let mut full = 0;
    for t in tasks {
        match t.await.expect("join").expect("add") {
            Added::Added(members) => {
                added += 1;
                assert!(members.len() <= LIMIT, "{members:?}");
            }
            Added::Full => full += 1,
            Added::Already => panic!("nobody was added twice"),
        }
    }
    assert_eq!((added, full), (LIMIT - 2, 20 - (LIMIT - 2)));
    assert_eq!(store.members(chat).await.expect("members").len(), LIMIT);
    assert_eq!(
        store
            .chat(chat)
            .await
            .expect("chat")
            .expect("stored")
            .member_count,
        LIMIT
    );
    let e = event(&ids, chat, ChatEventType::MemberAdded, owner, Some(first));
    assert_eq!(
        store.add_member(member(first), e, 100).await.expect("add"),
        Added::Already
    );
    // Every add is on the timeline, after chat_created.
    let history = store.history(chat, None, 100).await.expect("history");
    let added_events = history
        .iter()
        .filter(|i| matches!(i, Item::Event(e) if e.kind == ChatEventType::MemberAdded))
        .count();
    assert_eq!(added_events, LIMIT - 2);
    match history.last() {
        Some(Item::Event(created)) => {
            assert_eq!(created.kind, ChatEventType::ChatCreated);
            assert_eq!(created.members, [owner, first]);
            assert_eq!(created.title.as_deref(), Some("team"));
        }
        other => panic!("the oldest item is {other:?}"),
    }
}

async fn roles_and_the_owner_leaving(store: Store) {
    let (owner, admin, plain, stranger) = (new_id(), new_id(), new_id(), new_id());
    let ids = TimeUuidGenerator::new();
    let chat = group(&store, &ids, owner, &[plain, admin]).await;
    assert!(store
        .set_role(chat, admin, Role::Admin)
        .await
        .expect("role"));
    assert!(!store
        .set_role(chat, stranger, Role::Admin)
        .await
        .expect("role"));
    let role_of = |user| {
        let store = store.clone();
        async move {
            store
                .membership(chat, user)
                .await
                .expect("membership")
                .map(|(_, m)| m.role)
        }
    };
    assert_eq!(role_of(admin).await, Some(Role::Admin));
    // The owner leaves: the admin (not the longer-standing member) inherits.
    let leave = event(&ids, chat, ChatEventType::MemberRemoved, owner, Some(owner));
    match store.remove_member(leave).await.expect("leave") {
        Changed::Done(members) => assert_eq!(members.len(), 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(role_of(owner).await, None);
    assert_eq!(role_of(admin).await, Some(Role::Owner));
    assert!(store
        .chats_of(owner, ChatsPage::ALL)
        .await
        .expect("list")
        .is_empty());
    // Handing over: the new owner, the old one an admin.
    assert!(store
        .set_role(chat, plain, Role::Owner)
        .await
        .expect("hand over"));
    assert_eq!(
        (role_of(plain).await, role_of(admin).await),
        (Some(Role::Owner), Some(Role::Admin))
    );
    let gone = event(
        &ids,
        chat,
        ChatEventType::MemberRemoved,
        plain,
        Some(stranger),
    );
    assert_eq!(
        store.remove_member(gone).await.expect("remove"),
        Changed::NotMember
    );
    assert_eq!(
        store
            .chat(chat)
            .await
            .expect("chat")
            .expect("stored")
            .member_count,
        2
    );
    let renamed = event(&ids, chat, ChatEventType::ChatRenamed, stranger, None);
    assert_eq!(
        store.rename(renamed).await.expect("rename"),
        Changed::NotMember
    );
}

async fn removed_members_are_refused_even_while_sending(store: Store) {
    let (owner, leaver) = (new_id(), new_id());
    let ids = Arc::new(TimeUuidGenerator::new());
    let chat = group(&store, &ids, owner, &[leaver]).await;
    let sends: Vec<_> = (0..100)
        .map(|_| {
            let (store, ids) = (store.clone(), ids.clone());
            tokio::spawn(
                async move { insert(&store, &message(chat, ids.next(), leaver, None)).await },
            )
        })
        .collect();
    tokio::task::yield_now().await;
    let removal = event(
        &ids,
        chat,
        ChatEventType::MemberRemoved,
        owner,
        Some(leaver),
    );
    assert!(
        matches!(store.remove_member(removal).await.expect("remove"), Changed::Done(m) if m == [owner])
    );
    let mut stored = 0;
    for s in sends {
        match s.await.expect("join") {
            Ok(Inserted::New(_)) => stored += 1,
            Err(StoreError::NotMember) => {}
            other => panic!("a send ended {other:?}"),
        }
    }
    // Refused from the moment of removal, and nothing half-written.
    assert!(matches!(
        insert(&store, &message(chat, ids.next(), leaver, None)).await,
        Err(StoreError::NotMember)
    ));
    let history = store.history(chat, None, 1000).await.expect("history");
    let theirs = history
        .iter()
        .filter(|i| i.message().is_some_and(|m| m.sender_id == leaver))
        .count();
    assert_eq!(theirs, stored);
    assert_eq!(
        store.membership(chat, leaver).await.expect("membership"),
        None
    );
    assert_eq!(
        store.chat_summary(leaver, chat).await.expect("summary"),
        None
    );
    assert!(store
        .chats_of(leaver, ChatsPage::ALL)
        .await
        .expect("list")
        .is_empty());
    assert_eq!(
        store
            .mark_read(chat, leaver, history[1].id())
            .await
            .expect("read"),
        ReadMark::NotMember
    );
}

async fn read_horizons_never_move_back_and_unread_counts_are_exact(store: Store) {
    let (a, b, c) = (new_id(), new_id(), new_id());
    let ids = TimeUuidGenerator::new();
    let chat = group(&store, &ids, a, &[b, c]).await;
    let mut from_b = Vec::new();
    for _ in 0..5 {
        from_b.push(say(&store, &ids, chat, b).await.id);
    }
    for _ in 0..3 {
        say(&store, &ids, chat, c).await;
    }
    assert_eq!(
        (
            unread(&store, a, chat).await,
            unread(&store, b, chat).await,
            unread(&store, c, chat).await
        ),
        (8, 3, 0)
    );
    assert_eq!(
        store.mark_read(chat, a, from_b[4]).await.expect("read"),
        ReadMark::Moved
    );
    assert_eq!(unread(&store, a, chat).await, 3);
    assert_eq!(
        store.mark_read(chat, a, from_b[2]).await.expect("read"),
        ReadMark::Unchanged
    );
    assert_eq!(
        store.mark_read(chat, a, from_b[4]).await.expect("read"),
        ReadMark::Unchanged
    );
    let summary = store
        .chat_summary(a, chat)
        .await
        .expect("summary")
        .expect("a's");
    assert_eq!((summary.unread, summary.last_read_id), (3, Some(from_b[4])));
    let created = store.catch_up(chat, ids.next(), 1).await.expect("catch up");
    assert!(created.is_empty());
    let oldest = store.history(chat, None, 100).await.expect("history");
    let chat_created = oldest.last().map(Item::id).expect("chat_created");
    assert_eq!(
        store.mark_read(chat, a, chat_created).await.expect("read"),
        ReadMark::NotAMessage
    );
    assert_eq!(
        store.mark_read(chat, a, ids.next()).await.expect("read"),
        ReadMark::NotAMessage
    );
    assert_eq!(
        store
            .mark_read(chat, new_id(), from_b[4])
            .await
            .expect("read"),
        ReadMark::NotMember
    );
    // Sending reads everything before: the sender's horizon is their message.
    let mine = say(&store, &ids, chat, a).await;
    assert_eq!(
        (unread(&store, a, chat).await, unread(&store, b, chat).await),
        (0, 4)
    );
    let receipts: Vec<(UserId, Option<TimeUuid>)> = store
        .members(chat)
        .await
        .expect("members")
        .iter()
        .map(|m| (m.id, m.last_read_id))
        .collect();
    assert_eq!(receipts[0], (a, Some(mine.id)));
    assert_eq!(
        receipts.iter().find(|(id, _)| *id == b).map(|r| r.1),
        Some(Some(from_b[4]))
    );
    // Someone who joins later has nothing unread from before.
    let d = new_id();
    let add = event(&ids, chat, ChatEventType::MemberAdded, a, Some(d));
    assert!(matches!(
        store.add_member(member(d), add, 100).await.expect("add"),
        Added::Added(_)
    ));
    assert_eq!(unread(&store, d, chat).await, 0);
    say(&store, &ids, chat, b).await;
    assert_eq!(unread(&store, d, chat).await, 1);
    // Counts stop at 1000.
    for _ in 0..1005 {
        say(&store, &ids, chat, c).await;
    }
    assert_eq!(unread(&store, d, chat).await, 1000);
    let listed = store.chats_of(d, ChatsPage::ALL).await.expect("list");
    assert_eq!(listed[0].unread, 1000);
}

async fn replies_must_name_a_message_of_the_chat(store: Store) {
    let (a, b) = (new_id(), new_id());
    let ids = TimeUuidGenerator::new();
    let chat = group(&store, &ids, a, &[b]).await;
    let elsewhere = direct(&store, &ids, a, b, 0).await;
    let target = say(&store, &ids, chat, b).await;
    let foreign = say(&store, &ids, elsewhere, b).await;
    let mut reply = message(chat, ids.next(), a, None);
    reply.reply_to = Some(target.id);
    assert_eq!(
        insert(&store, &reply).await.expect("reply"),
        Inserted::New(reply.clone())
    );
    let newest = store.history(chat, None, 1).await.expect("history");
    assert_eq!(
        newest[0].message().and_then(|m| m.reply_to),
        Some(target.id)
    );
    let chat_created = store
        .history(chat, None, 100)
        .await
        .expect("history")
        .last()
        .map(Item::id)
        .expect("created");
    for bad in [foreign.id, chat_created, ids.next()] {
        let mut reply = message(chat, ids.next(), a, None);
        reply.reply_to = Some(bad);
        assert!(
            matches!(insert(&store, &reply).await, Err(StoreError::NoSuchReply)),
            "{bad}"
        );
    }
    assert_eq!(
        store.history(chat, None, 100).await.expect("history").len(),
        3
    );
}

/// Eleven chats, four of them created in the same millisecond: pages of
/// every size from 1 to 12 list them all, in order, once.
async fn a_users_chats_page_without_skipping_or_repeating(store: Store) {
    let ids = TimeUuidGenerator::new();
    let me: UserId = new_id();
    for n in 0..7 {
        direct(&store, &ids, me, new_id(), 1000 * (n + 1)).await;
    }
    let now = now_ms();
    for _ in 0..4 {
        let (new, log) = NewChat::direct(named(me), named(new_id()), now - 500, ids.next());
        assert!(store.create_chat(new, log).await.expect("create"));
    }
    let all: Vec<ChatId> = store
        .chats_of(me, ChatsPage::ALL)
        .await
        .expect("list")
        .iter()
        .map(|s| s.chat.id)
        .collect();
    assert_eq!(all.len(), 11);
    for limit in 1..=12 {
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .chats_of(me, ChatsPage { after, limit })
                .await
                .expect("page");
            assert!(page.len() <= limit);
            paged.extend(page.iter().map(|s| s.chat.id));
            match page.last() {
                Some(last) if page.len() == limit => after = Some(ChatCursor::of(last)),
                _ => break,
            }
        }
        assert_eq!(paged, all, "pages of {limit}");
    }
}
