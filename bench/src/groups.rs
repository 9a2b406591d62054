//! Figures 7 and 8: group chats. Sending into a group with many members,
//! next to sending into a direct chat in the same run (the send path reads
//! the sender's membership, never the member list, so the two should cost
//! the same); and the chat list of a user with many chats, next to the chat
//! list of a user with one (one query, not one per chat).

use std::sync::Arc;

use futures::StreamExt;
use serde_json::json;

use crate::{
    closed_loop, figure, get_ok, progress, send, send_ok, url, Figure, Fixture, Plan, User,
};

/// Requests in flight while setting up.
const SETUP: usize = 16;

/// `concurrency` clients of one sender, sending into `chat` for `plan.phase`.
async fn sends_into(plan: &Plan, f: &Fixture, from: &User, chat: &str) -> crate::Stats {
    let target = Arc::new(url(format!("{}/chat/{chat}/messages", f.base)));
    let (http, from) = (f.http.clone(), Arc::new(from.clone()));
    closed_loop(f.concurrency, plan.phase, move |_, _| {
        let (http, target, from) = (http.clone(), target.clone(), from.clone());
        async move { send_ok(&http, &target, &from).await }
    })
    .await
}

/// `concurrency` clients reading `user`'s chat list for `plan.phase`.
async fn chat_lists(plan: &Plan, f: &Fixture, user: &User) -> crate::Stats {
    let (http, list, auth) = (f.http.clone(), f.chat_list.clone(), user.auth.clone());
    closed_loop(f.concurrency, plan.phase, move |_, _| {
        let (http, list, auth) = (http.clone(), list.clone(), auth.clone());
        async move { get_ok(&http, list, &auth).await }
    })
    .await
}

pub(crate) async fn groups_phase(
    plan: &Plan,
    f: &Fixture,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    progress("groups: registering members");
    let owner = f.api.user("group-owner").await?;
    let members: Vec<User> = futures::stream::iter(1..plan.group_members)
        .map(|i| f.api.user_owned(format!("group-member{i}")))
        .buffer_unordered(SETUP)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let group = f.api.group(&owner, "bench group", &members).await?;
    let direct = f.api.chat(&owner, &members[0]).await?;
    let load = format!(
        "{} concurrent clients of one sender into one chat, {:?}",
        f.concurrency, plan.phase
    );
    progress("send into a direct chat (baseline)");
    let into_direct = sends_into(plan, f, &owner, &direct).await;
    progress("send into a group");
    let into_group = sends_into(plan, f, &owner, &group).await;
    let name = format!("send into a {}-member group", plan.group_members);
    figures.push(figure(
        &format!("{name} msg/s"),
        into_group.rate(),
        "req/s",
        Some(into_direct.rate()),
        load.clone(),
        json!({"group": into_group.summary(), "baseline_direct": into_direct.summary()}),
    ));
    figures.push(figure(
        &format!("{name} p99"),
        into_group.ms(0.99),
        "ms",
        Some(into_direct.ms(0.99)),
        load,
        json!({"p50_ms": into_group.ms(0.5), "baseline_p50_ms": into_direct.ms(0.5)}),
    ));

    progress("chat list of a user with many chats: setting up");
    let reader = f.api.user("many-chats").await?;
    let partner = &members[0];
    let made = futures::stream::iter(0..plan.listed_chats)
        .map(|i| {
            let (reader, partner) = (&reader, partner);
            async move {
                let chat = f
                    .api
                    .group(reader, &format!("chat {i}"), std::slice::from_ref(partner))
                    .await?;
                // A last message and an unread count in every entry.
                send(&f.http, &f.base, &chat, partner)
                    .await
                    .ok_or_else(|| anyhow::anyhow!("send into chat {i}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SETUP)
        .collect::<Vec<_>>()
        .await;
    made.into_iter().collect::<anyhow::Result<()>>()?;
    // The baseline: a member of the big group alone, so one chat.
    let one_chat = &members[plan.group_members.min(members.len()) - 1];
    progress("GET /chats, one chat (baseline)");
    let small = chat_lists(plan, f, one_chat).await;
    progress("GET /chats, many chats");
    let large = chat_lists(plan, f, &reader).await;
    let load = format!(
        "{} concurrent clients, {:?}; every chat with a last message and an unread count",
        f.concurrency, plan.phase
    );
    let name = format!("GET /chats (first page) with {} chats", plan.listed_chats);
    figures.push(figure(
        &format!("{name} req/s"),
        large.rate(),
        "req/s",
        Some(small.rate()),
        load.clone(),
        json!({"many": large.summary(), "baseline_one_chat": small.summary()}),
    ));
    figures.push(figure(
        &format!("{name} p99"),
        large.ms(0.99),
        "ms",
        Some(small.ms(0.99)),
        load,
        json!({"p50_ms": large.ms(0.5), "baseline_p50_ms": small.ms(0.5)}),
    ));
    Ok(())
}
