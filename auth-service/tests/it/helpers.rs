use std::net::SocketAddr;

use auth_service::config::SigningAlgorithm;
use auth_service::{AppState, Config};
use reqwest::{Response, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use tempfile::TempDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Whether PostgreSQL tests can run; prints why not when they cannot.
    pub fn available(self) -> bool {
        if self == Backend::Sqlite || std::env::var("TEST_DATABASE_URL").is_ok() {
            return true;
        }
        if std::env::var("REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
            panic!("REQUIRE_POSTGRES=1 but TEST_DATABASE_URL is not set");
        }
        eprintln!("SKIPPED on PostgreSQL: TEST_DATABASE_URL is not set");
        false
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub data_dir: TempDir,
    pub config: Config,
    server: testkit::InProcess,
}

pub async fn spawn(backend: Backend) -> TestApp {
    spawn_with(backend, |_| {}).await
}

/// Starts the service like production does, after `tweak` adjusts config.
pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::embedded(data_dir.path());
    if backend == Backend::Postgres {
        config.database_url = Some(SecretString::from(
            testkit::fresh_postgres_database("auth_test")
                .await
                .expect("available() was checked"),
        ));
    }
    tweak(&mut config);
    start(config, data_dir).await
}

pub async fn start(config: Config, data_dir: TempDir) -> TestApp {
    let server = testkit::InProcess::start::<AppState>(config.clone()).await;
    TestApp {
        addr: server.addr,
        client: reqwest::Client::new(),
        data_dir,
        config,
        server,
    }
}

pub fn eddsa(config: &mut Config) {
    config.tokens.jwt_algorithm = SigningAlgorithm::Eddsa;
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the server gracefully and waits for it; returns the data dir
    /// and config so a test can start it again on the same data.
    pub async fn stop(self) -> (Config, TempDir) {
        self.server.stop().await;
        (self.config, self.data_dir)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    pub async fn register(&self, username: &str, password: &str) -> Response {
        self.post(
            "/users",
            &json!({ "username": username, "password": password }),
        )
        .await
    }

    pub async fn login(&self, username: &str, password: &str) -> Response {
        self.post(
            "/login",
            &json!({ "username": username, "password": password }),
        )
        .await
    }

    /// Registers and logs in; returns the login response body.
    pub async fn signed_up(&self, username: &str) -> Value {
        let r = self.register(username, "password123").await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap_or_default()
        );
        let r = self.login(username, "password123").await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.expect("json")
    }
}

pub use testkit::error_code;
