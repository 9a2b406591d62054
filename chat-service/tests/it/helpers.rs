use std::num::NonZeroU32;
use std::path::PathBuf;

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use uuid::Uuid;

/// A running server task with its shutdown switch.
pub type Running = testkit::InProcess;

/// auth-service and chat-service on one data directory, as in embedded mode.
pub struct Stack {
    pub auth: Running,
    pub chat: Running,
    pub client: reqwest::Client,
    pub data_dir: TempDir,
    pub config: chat_service::Config,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub token: String,
}

pub async fn spawn() -> Stack {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(tweak: impl FnOnce(&mut chat_service::Config)) -> Stack {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let auth = start_auth(data_dir.path().to_path_buf()).await;
    let mut config = chat_service::Config::embedded(data_dir.path());
    config.auth_url = format!("http://{}", auth.addr);
    config.limits.send_rate_per_sec = NonZeroU32::new(100_000).expect("positive");
    config.limits.send_burst = NonZeroU32::new(100_000).expect("positive");
    tweak(&mut config);
    let chat = start_chat(config.clone()).await;
    Stack {
        auth,
        chat,
        client: reqwest::Client::new(),
        data_dir,
        config,
    }
}

pub async fn start_auth(data_dir: PathBuf) -> Running {
    Running::start::<auth_service::AppState>(auth_service::Config::embedded(data_dir)).await
}

pub async fn start_chat(config: chat_service::Config) -> Running {
    Running::start::<chat_service::AppState>(config).await
}

impl Stack {
    pub fn chat_url(&self, path: &str) -> String {
        format!("http://{}{}", self.chat.addr, path)
    }

    /// Registers and logs in a user.
    pub async fn user(&self, name: &str) -> User {
        let auth = format!("http://{}", self.auth.addr);
        assert_eq!(
            testkit::register(&self.client, &auth, name).await,
            StatusCode::CREATED
        );
        let login = testkit::login(&self.client, &auth, name).await;
        User {
            id: login.id.parse().expect("uuid"),
            token: login.token,
        }
    }

    pub async fn get(&self, path: &str, user: Option<&User>) -> Response {
        let mut req = self.client.get(self.chat_url(path));
        if let Some(u) = user {
            req = req.bearer_auth(&u.token);
        }
        req.send().await.expect("request")
    }

    pub async fn post(&self, path: &str, user: Option<&User>, body: &Value) -> Response {
        self.call(reqwest::Method::POST, path, user, Some(body))
            .await
    }

    /// Any request, with a JSON body when given.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        user: Option<&User>,
        body: Option<&Value>,
    ) -> Response {
        let mut req = self.client.request(method, self.chat_url(path));
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(u) = user {
            req = req.bearer_auth(&u.token);
        }
        req.send().await.expect("request")
    }

    /// Stops chat-service and starts it again on the same data.
    pub async fn restart(self) -> Stack {
        let Stack {
            auth,
            chat,
            client,
            data_dir,
            config,
        } = self;
        chat.stop().await;
        let chat = start_chat(config.clone()).await;
        Stack {
            auth,
            chat,
            client,
            data_dir,
            config,
        }
    }

    /// Starts the chat between `a` and `b`; returns its id.
    pub async fn chat_between(&self, a: &User, b: &User) -> Uuid {
        let r = self
            .post("/chats", Some(a), &json!({ "user_id": b.id }))
            .await;
        assert!(r.status().is_success(), "{}", r.status());
        let chat: Value = r.json().await.expect("json");
        chat["id"].as_str().expect("id").parse().expect("uuid")
    }

    pub async fn send(
        &self,
        chat: Uuid,
        from: &User,
        text: &str,
        client_id: Option<&str>,
    ) -> Response {
        let mut body = json!({ "text": text });
        if let Some(c) = client_id {
            body["client_message_id"] = json!(c);
        }
        self.post(&format!("/chat/{chat}/messages"), Some(from), &body)
            .await
    }

    /// Sends and returns the stored message.
    pub async fn sent(&self, chat: Uuid, from: &User, text: &str) -> Value {
        let r = self.send(chat, from, text, None).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.expect("json")
    }

    pub async fn history(&self, chat: Uuid, user: &User, query: &str) -> Value {
        let r = self.get(&format!("/chat/{chat}?{query}"), Some(user)).await;
        assert_eq!(r.status(), StatusCode::OK, "{query}");
        r.json().await.expect("json")
    }
}

pub use testkit::error_code;

pub use testkit::Broker;
