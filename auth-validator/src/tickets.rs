//! Stream tickets: how a browser opens a stream without putting its access
//! token in a URL.
//!
//! Browsers cannot set headers on `EventSource` (or `WebSocket`), and an
//! access token in a query string ends up in proxy logs and browser
//! history. So a client first calls `POST /events/ticket` with its bearer
//! token and gets a ticket: 32 random bytes, valid for
//! [`TICKET_TTL`] (`--ticket-ttl-secs`) and for one use. It then opens the stream with
//! `?ticket=…`; [`StreamUser`] redeems the ticket for the user who asked
//! for it. Non-browser clients may keep using the `Authorization` header.
//!
//! Tickets live in the memory of the process that issued them: a client
//! opens its stream on the replica it asked (the embedded realtime store
//! has one). At most [`MAX_OUTSTANDING`] are outstanding; expired ones are
//! dropped as new ones are issued.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use service_kit::ApiError;

use crate::{AuthUser, Verifier};

/// How long a ticket is valid.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Most tickets outstanding at once (each about 1 KiB).
pub const MAX_OUTSTANDING: usize = 100_000;

/// How long this process's tickets stay valid.
#[derive(Debug, Clone, clap::Args)]
pub struct TicketConfig {
    /// Seconds a stream ticket (`POST /events/ticket`) stays valid: 1 to 60.
    #[arg(
        long,
        env = "TICKET_TTL_SECS",
        default_value_t = TICKET_TTL.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=60)
    )]
    pub ticket_ttl_secs: u64,
}

impl TicketConfig {
    pub fn tickets(&self) -> Tickets {
        Tickets::new(Duration::from_secs(self.ticket_ttl_secs), MAX_OUTSTANDING)
    }
}

/// The tickets this process issued and nobody has used yet.
#[derive(Clone)]
pub struct Tickets {
    inner: Arc<Mutex<Book>>,
    ttl: Duration,
    max: usize,
}

#[derive(Default)]
struct Book {
    tickets: HashMap<String, (AuthUser, Instant)>,
}

/// A ticket as given to the client.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Ticket {
    pub ticket: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

impl Default for Tickets {
    fn default() -> Self {
        Self::new(TICKET_TTL, MAX_OUTSTANDING)
    }
}

impl Tickets {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            inner: Arc::default(),
            ttl,
            max,
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new ticket for `user`, or 503 when [`MAX_OUTSTANDING`] unexpired
    /// tickets are waiting.
    pub fn issue(&self, user: &AuthUser) -> Result<Ticket, ApiError> {
        let now = Instant::now();
        let mut book = self.book();
        if book.tickets.len() >= self.max {
            book.tickets.retain(|_, (_, expires)| *expires > now);
        }
        if book.tickets.len() >= self.max {
            return Err(ApiError::unavailable(
                "too many stream tickets outstanding; retry shortly",
            ));
        }
        let ticket = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        book.tickets
            .insert(ticket.clone(), (user.clone(), now + self.ttl));
        Ok(Ticket {
            ticket,
            expires_in: self.ttl.as_secs(),
        })
    }

    /// The user `ticket` was issued to, once: `None` when it is unknown,
    /// expired or already used.
    pub fn redeem(&self, ticket: &str) -> Option<AuthUser> {
        let (user, expires) = self.book().tickets.remove(ticket)?;
        (expires > Instant::now()).then_some(user)
    }
}

/// The caller of a stream: from `Authorization: Bearer …` like
/// [`AuthUser`], or else from a `?ticket=` issued by [`Tickets`].
pub struct StreamUser(pub AuthUser);

#[derive(Deserialize)]
struct TicketParam {
    ticket: Option<String>,
}

impl<S> FromRequestParts<S> for StreamUser
where
    S: Send + Sync,
    Verifier: FromRef<S>,
    Tickets: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ticket = Query::<TicketParam>::try_from_uri(&parts.uri)
            .ok()
            .and_then(|q| q.0.ticket);
        match ticket {
            Some(ticket) if !parts.headers.contains_key(axum::http::header::AUTHORIZATION) => {
                Tickets::from_ref(state)
                    .redeem(&ticket)
                    .map(StreamUser)
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::UNAUTHORIZED,
                            "invalid_ticket",
                            "the ticket is unknown, expired or already used: get a new one with POST /events/ticket",
                        )
                    })
            }
            _ => AuthUser::from_request_parts(parts, state).await.map(StreamUser),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BearerToken, Claims};

    fn user() -> AuthUser {
        let claims: Claims = serde_json::from_value(serde_json::json!({
            "sub": uuid::Uuid::new_v4(),
            "exp": 4_000_000_000u64,
            "iss": "chat-auth",
            "aud": "chat",
            "iat": 0,
            "jti": "j",
        }))
        .expect("claims");
        AuthUser {
            id: claims.sub,
            claims,
            token: BearerToken::new("token"),
        }
    }

    #[test]
    fn a_ticket_is_used_once() {
        let tickets = Tickets::default();
        let alice = user();
        let t = tickets.issue(&alice).expect("issue");
        assert_eq!(t.expires_in, TICKET_TTL.as_secs());
        assert!(t.ticket.len() >= 43, "32 random bytes");
        assert_eq!(tickets.redeem(&t.ticket).map(|u| u.id), Some(alice.id));
        assert!(tickets.redeem(&t.ticket).is_none(), "used");
        assert!(tickets.redeem("made-up").is_none());
    }

    #[test]
    fn tickets_expire_and_are_bounded() {
        let tickets = Tickets::new(Duration::ZERO, 2);
        let alice = user();
        let t = tickets.issue(&alice).expect("issue");
        assert!(tickets.redeem(&t.ticket).is_none(), "expired");
        let bounded = Tickets::new(Duration::from_secs(60), 2);
        bounded.issue(&alice).expect("one");
        bounded.issue(&alice).expect("two");
        assert!(bounded.issue(&alice).is_err(), "a third waits");
        let expiring = Tickets::new(Duration::ZERO, 2);
        for _ in 0..5 {
            expiring.issue(&alice).expect("expired ones make room");
        }
    }
}
