//! Who the other participant is: auth-service answers.

use async_trait::async_trait;
use chat_events::UserId;

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("user directory: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait UserDirectory: Send + Sync + 'static {
    /// The user's name, or `None` if there is no such user. `bearer` is the
    /// caller's access token, forwarded so auth-service authorises the call.
    async fn username(&self, id: UserId, bearer: &str) -> Result<Option<String>, DirectoryError>;
}

/// `GET {auth_url}/users/{id}` on auth-service.
pub struct HttpDirectory {
    base: String,
    http: reqwest::Client,
}

impl HttpDirectory {
    pub fn new(base: &str, http: reqwest::Client) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        }
    }
}

#[async_trait]
impl UserDirectory for HttpDirectory {
    async fn username(&self, id: UserId, bearer: &str) -> Result<Option<String>, DirectoryError> {
        let response = self
            .http
            .get(format!("{}/users/{id}", self.base))
            .bearer_auth(bearer)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| DirectoryError::Unavailable(e.to_string()))?;
        match response.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let user: serde_json::Value = response
                    .json()
                    .await
                    .map_err(|e| DirectoryError::Unavailable(e.to_string()))?;
                Ok(user["username"].as_str().map(str::to_owned))
            }
            s => Err(DirectoryError::Unavailable(format!(
                "GET /users/{id} answered {s}"
            ))),
        }
    }
}
