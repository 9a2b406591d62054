//! The HTTP API.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use auth_validator::AuthUser;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use service_kit::error::{ErrorBody, ErrorDetail};
use service_kit::openapi::Conventions;
use service_kit::{ApiError, Json, Path, Query};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::domain::{self, Email, Password, Username};
use crate::error::{Error, Result};
use crate::store::{Rotation, UserRow};
use crate::tokens::{self, unix_now};
use crate::AppState;

pub const DEFAULT_SEARCH_LIMIT: i64 = 20;
pub const MAX_SEARCH_LIMIT: i64 = 100;

/// The API routes alone (no probes, metrics or OpenAPI).
pub fn api(state: AppState) -> Router {
    api_without_firebase(state.clone()).merge(
        Router::new()
            .route("/token/firebase", post(firebase_token))
            .with_state(state),
    )
}

/// [`api`] without `POST /token/firebase`, for embedding where there is no
/// Firestore (the all-in-one serves its realtime documents itself).
pub fn api_without_firebase(state: AppState) -> Router {
    Router::new()
        .route("/users", post(register).get(search_users))
        .route("/users/me", get(me))
        .route("/users/{id}", get(user_by_id))
        .route("/login", post(login))
        .route("/token/refresh", post(refresh))
        .route("/logout", post(logout))
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    modifiers(&Conventions),
    info(
        title = "auth-service",
        description = "Users, passwords, login and tokens."
    ),
    paths(
        register,
        login,
        refresh,
        logout,
        firebase_token,
        search_users,
        me,
        user_by_id,
        jwks
    ),
    components(schemas(
        RegisterRequest,
        LoginRequest,
        RefreshRequest,
        TokenResponse,
        FirebaseTokenResponse,
        PrivateUser,
        PublicUser,
        UserPage,
        ErrorBody,
        ErrorDetail
    ))
)]
pub struct ApiDoc;

#[derive(Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// 3–32 of `A-Z a-z 0-9 _ . -`, starting with a letter or digit; unique
    /// ignoring case.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$", example = "alice")]
    pub username: String,
    /// 8–128 characters.
    #[schema(min_length = 8, max_length = 128, example = "correct horse")]
    pub password: String,
    /// An e-mail address (not verified).
    #[schema(
        max_length = 254,
        pattern = r"^[!-?A-~]{1,64}@(?:[!-\-/-?A-~]+\.)+[!-\-/-?A-~]+$",
        example = "alice@example.com"
    )]
    pub email: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    #[schema(example = "alice")]
    pub username: String,
    #[schema(example = "correct horse")]
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// The `refresh_token` of the last login or refresh (single use).
    pub refresh_token: String,
}

/// The caller's own account.
#[derive(Serialize, ToSchema)]
pub struct PrivateUser {
    pub id: Uuid,
    pub username: String,
    pub email: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

/// What anyone signed in may see of another user.
#[derive(Serialize, ToSchema)]
pub struct PublicUser {
    pub id: Uuid,
    pub username: String,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Access token lifetime, seconds.
    pub expires_in: u64,
    /// Single use: each refresh returns a new one.
    pub refresh_token: String,
    pub user: PrivateUser,
}

/// A Firebase custom token for `signInWithCustomToken`.
#[derive(Serialize, ToSchema)]
pub struct FirebaseTokenResponse {
    /// RS256 JWT whose `uid` is the caller's user id.
    pub token: String,
    /// Seconds until it can no longer be exchanged (at most 3600).
    pub expires_in: u64,
}

#[derive(Serialize, ToSchema)]
pub struct UserPage {
    /// In username order (case-insensitive).
    pub users: Vec<PublicUser>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
pub struct SearchParams {
    /// Username prefix, case-insensitive. Empty or absent lists everyone.
    #[param(max_length = 32, pattern = r"^[A-Za-z0-9_.-]*$")]
    pub query: Option<String>,
    /// 1–100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(max_length = 32, pattern = r"^[A-Za-z0-9_.-]*$")]
    pub cursor: Option<String>,
}

fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl From<&UserRow> for PrivateUser {
    fn from(u: &UserRow) -> Self {
        Self {
            id: u.id,
            username: u.username.clone(),
            email: u.email.clone(),
            created_at: rfc3339(u.created_at),
        }
    }
}

impl From<&UserRow> for PublicUser {
    fn from(u: &UserRow) -> Self {
        Self {
            id: u.id,
            username: u.username.clone(),
            created_at: rfc3339(u.created_at),
        }
    }
}

/// Register a user.
///
/// One client address may register `--registrations-per-address-per-hour`
/// accounts an hour; past it, 429 with `Retry-After`.
#[utoipa::path(post, path = "/users", request_body = RegisterRequest, responses(
    (status = 201, body = PrivateUser),
    (status = 409, description = "username taken", body = ErrorBody),
    (status = 422, description = "invalid fields", body = ErrorBody),
    (status = 429, description = "too many registrations from this address", body = ErrorBody),
))]
#[tracing::instrument(skip_all)]
async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<PrivateUser>)> {
    let mut problems = std::collections::BTreeMap::new();
    let username = Username::parse(&body.username).map_err(|p| problems.insert("username", p));
    let password = Password::parse(body.password).map_err(|p| problems.insert("password", p));
    let email = match body.email.as_deref() {
        None | Some("") => Ok(None),
        Some(raw) => Email::parse(raw)
            .map(Some)
            .map_err(|p| problems.insert("email", p)),
    };
    let (Ok(username), Ok(password), Ok(email)) = (username, password, email) else {
        return Err(Error::Validation(problems));
    };
    // Refuse a taken name before paying for a hash; the unique index still
    // decides races.
    if state.db.user_by_key(username.key()).await?.is_some() {
        return Err(Error::UsernameTaken);
    }
    if let Some(ip) = ip {
        registration_allowed(&state, ip)?;
    }
    let password_hash = state.passwords.hash(password.into_secret()).await?;
    let user = UserRow {
        id: Uuid::new_v4(),
        username: username.as_str().to_owned(),
        username_key: username.key().to_owned(),
        email: email.map(|e| e.as_str().to_owned()),
        password_hash,
        created_at: unix_now(),
    };
    state.db.insert_user(&user).await?;
    metrics::counter!("auth_registrations_total").increment(1);
    tracing::info!(user_id = %user.id, "user registered");
    Ok((StatusCode::CREATED, Json(PrivateUser::from(&user))))
}

/// Takes one of `ip`'s registrations, or says how long until it has one.
fn registration_allowed(state: &AppState, ip: IpAddr) -> Result<()> {
    use governor::clock::{Clock as _, DefaultClock};
    // Forget addresses whose allowance is full again, so the map stays
    // bounded by the addresses registering within an hour.
    if state.registrations.len() > 10_000 {
        state.registrations.retain_recent();
    }
    state.registrations.check_key(&ip).map_err(|not_until| {
        metrics::counter!("auth_registrations_refused_total").increment(1);
        Error::RateLimited(not_until.wait_time_from(DefaultClock::default().now()))
    })
}

/// The client's address: the TCP peer, or the first address in the
/// configured proxy header.
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> std::result::Result<Self, Self::Rejection> {
        let from_header = state
            .client_ip_header
            .as_ref()
            .and_then(|name: &HeaderName| {
                let value = parts.headers.get(name)?.to_str().ok()?;
                value.split(',').next()?.trim().parse().ok()
            });
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(ClientIp(from_header.or(peer)))
    }
}

/// Log in with username and password.
///
/// Unknown users and wrong passwords get the same 401 after the same
/// hashing work. Repeated failures get 429 with `Retry-After` until the
/// window ends: for one account from one address, for one account from
/// addresses it has not logged in from, or from one address (see the
/// README, "Login limits").
#[utoipa::path(post, path = "/login", request_body = LoginRequest, responses(
    (status = 200, body = TokenResponse),
    (status = 401, description = "invalid username or password", body = ErrorBody),
    (status = 429, description = "too many failed attempts", body = ErrorBody),
))]
#[tracing::instrument(skip_all)]
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<LoginRequest>,
) -> Result<Json<TokenResponse>> {
    // Anything that is not a well-formed username cannot exist: it is looked
    // up as a key no user has, so it costs the same as an unknown user.
    let account_key = Username::parse(&body.username)
        .map(|u| u.key().to_owned())
        .unwrap_or_default();
    let now = Instant::now();
    state
        .logins
        .check(&account_key, ip, now)
        .map_err(|retry_after| {
            metrics::counter!("auth_logins_total", "outcome" => "limited").increment(1);
            Error::RateLimited(retry_after)
        })?;
    let user = if account_key.is_empty() {
        None
    } else {
        state.db.user_by_key(&account_key).await?
    };
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let ok = state
        .passwords
        .verify(SecretString::from(body.password), stored)
        .await?;
    let Some(user) = user.filter(|_| ok) else {
        state.logins.failed(&account_key, ip, Instant::now());
        metrics::counter!("auth_logins_total", "outcome" => "failure").increment(1);
        return Err(Error::InvalidCredentials);
    };
    state.logins.succeeded(&account_key, ip, Instant::now());
    metrics::counter!("auth_logins_total", "outcome" => "success").increment(1);
    let family = Uuid::new_v4();
    let refresh_token = new_refresh(&state, family, user.id).await?;
    token_response(&state, &user, refresh_token).map(Json)
}

async fn new_refresh(state: &AppState, family: Uuid, user_id: Uuid) -> Result<String> {
    let (token, hash) = tokens::new_refresh_token();
    let now = unix_now();
    let expires = now + state.tokens.refresh_ttl.as_secs() as i64;
    state
        .db
        .insert_refresh_token(&hash, family, user_id, now, expires)
        .await?;
    Ok(token)
}

fn token_response(
    state: &AppState,
    user: &UserRow,
    refresh_token: String,
) -> Result<TokenResponse> {
    let (access_token, expires_in) = state.tokens.issue_access(user.id, &user.username)?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in,
        refresh_token,
        user: PrivateUser::from(user),
    })
}

/// Exchange a refresh token for a new access token and a new refresh token.
///
/// Each refresh token works once. Presenting one that was already used
/// revokes every token descended from the same login (its family), since
/// it means the token was copied.
#[utoipa::path(post, path = "/token/refresh", request_body = RefreshRequest, responses(
    (status = 200, body = TokenResponse),
    (status = 401, description = "invalid, expired, revoked or reused", body = ErrorBody),
))]
#[tracing::instrument(skip_all)]
async fn refresh(
    State(state): State<AppState>,
    Json(body): Json<RefreshRequest>,
) -> Result<Json<TokenResponse>> {
    let old_hash = tokens::hash_refresh_token(&body.refresh_token);
    let (token, new_hash) = tokens::new_refresh_token();
    let now = unix_now();
    let expires = now + state.tokens.refresh_ttl.as_secs() as i64;
    match state
        .db
        .rotate_refresh_token(&old_hash, &new_hash, now, expires)
        .await?
    {
        Rotation::Rotated { user_id } => {
            let user = state
                .db
                .user_by_id(user_id)
                .await?
                .ok_or(Error::InvalidRefreshToken)?;
            token_response(&state, &user, token).map(Json)
        }
        Rotation::Reused => {
            metrics::counter!("auth_refresh_reuse_total").increment(1);
            tracing::warn!("spent refresh token presented again; family revoked");
            Err(Error::InvalidRefreshToken)
        }
        Rotation::Invalid => Err(Error::InvalidRefreshToken),
    }
}

/// Log out: revoke the refresh token's family. Always 204, so the response
/// says nothing about whether the token existed.
#[utoipa::path(post, path = "/logout", request_body = RefreshRequest, responses(
    (status = 204, description = "the token (if any) and its family are revoked"),
))]
#[tracing::instrument(skip_all)]
async fn logout(
    State(state): State<AppState>,
    Json(body): Json<RefreshRequest>,
) -> Result<StatusCode> {
    let hash = tokens::hash_refresh_token(&body.refresh_token);
    state.db.revoke_family_of(&hash, unix_now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Find users by username prefix (signed-in users only).
#[utoipa::path(get, path = "/users", params(SearchParams), security(("bearer" = [])), responses(
    (status = 200, body = UserPage),
    (status = 400, body = ErrorBody),
    (status = 401, body = ErrorBody),
))]
#[tracing::instrument(skip_all)]
async fn search_users(
    State(state): State<AppState>,
    _caller: AuthUser,
    Query(params): Query<SearchParams>,
) -> Result<Json<UserPage>> {
    let prefix = domain::search_prefix(params.query.as_deref().unwrap_or(""))
        .map_err(|p| Error::BadRequest("invalid_query", format!("query {p}")))?;
    let limit = params.limit.unwrap_or(DEFAULT_SEARCH_LIMIT);
    if !(1..=MAX_SEARCH_LIMIT).contains(&limit) {
        return Err(Error::BadRequest(
            "invalid_limit",
            format!("limit must be 1 to {MAX_SEARCH_LIMIT}"),
        ));
    }
    // The cursor is the last username (normalised) of the previous page.
    let after = domain::search_prefix(params.cursor.as_deref().unwrap_or(""))
        .map_err(|p| Error::BadRequest("invalid_cursor", format!("cursor {p}")))?;
    let mut rows = state.db.search_users(&prefix, &after, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|u| u.username_key.clone()))
        .flatten();
    Ok(Json(UserPage {
        users: rows.iter().map(PublicUser::from).collect(),
        next_cursor,
    }))
}

/// The caller's own account.
#[utoipa::path(get, path = "/users/me", security(("bearer" = [])), responses(
    (status = 200, body = PrivateUser),
    (status = 401, body = ErrorBody),
))]
async fn me(State(state): State<AppState>, caller: AuthUser) -> Result<Json<PrivateUser>> {
    let user = state
        .db
        .user_by_id(caller.id)
        .await?
        .ok_or(Error::NotFound)?;
    Ok(Json(PrivateUser::from(&user)))
}

/// A Firebase custom token for the caller, to sign in to Firebase and
/// listen to their chats' Firestore documents.
#[utoipa::path(post, path = "/token/firebase", security(("bearer" = [])), responses(
    (status = 200, body = FirebaseTokenResponse),
    (status = 401, body = ErrorBody),
    (status = 501, description = "no Firebase service account is configured", body = ErrorBody),
))]
async fn firebase_token(
    State(state): State<AppState>,
    caller: AuthUser,
) -> std::result::Result<Json<FirebaseTokenResponse>, ApiError> {
    let Some(firebase) = &state.firebase else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "firebase_not_configured",
            "this server has no Firebase service account (--firebase-service-account-file)",
        ));
    };
    let now = u64::try_from(unix_now()).unwrap_or(0);
    let (token, expires_in) = firebase.mint(caller.id, now).map_err(|e| {
        tracing::error!(error = %e, "cannot sign a Firebase custom token");
        ApiError::internal()
    })?;
    Ok(Json(FirebaseTokenResponse { token, expires_in }))
}

/// One user's public profile.
#[utoipa::path(get, path = "/users/{id}", params(("id" = Uuid, Path, description = "The user's id.")), security(("bearer" = [])), responses(
    (status = 200, body = PublicUser),
    (status = 400, description = "id is not a UUID", body = ErrorBody),
    (status = 404, body = ErrorBody),
))]
async fn user_by_id(
    State(state): State<AppState>,
    _caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<PublicUser>> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| Error::BadRequest("invalid_id", "user id must be a UUID".into()))?;
    let user = state.db.user_by_id(id).await?.ok_or(Error::NotFound)?;
    Ok(Json(PublicUser::from(&user)))
}

/// Public signing keys (asymmetric mode only; 404 with HS256).
#[utoipa::path(get, path = "/.well-known/jwks.json", responses(
    (status = 200, description = "JWK set"),
    (status = 404, body = ErrorBody),
))]
async fn jwks(State(state): State<AppState>) -> Response {
    match state.tokens.jwks() {
        Some(set) => (
            [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
            axum::Json(set.clone()),
        )
            .into_response(),
        None => {
            ApiError::not_found("tokens are signed with a shared secret; no JWKS").into_response()
        }
    }
}

service_kit::test_every_route_is_documented!(
    include_str!("routes.rs"),
    <ApiDoc as utoipa::OpenApi>::openapi()
);
