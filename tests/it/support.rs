//! What the end-to-end tests share: the all-in-one binary as a child
//! process, and its resident memory.

/// The all-in-one binary on a free port with the given data directory.
pub struct Server {
    pub process: testkit::Process,
    pub base: String,
    pub port: u16,
}

impl Server {
    pub fn start(data: &std::path::Path) -> Self {
        Self::start_with_env(data, &[])
    }

    /// [`Self::start`] with extra environment variables. The binary is this
    /// build's, or `CHAT_BACKEND_BIN` when set (to run these tests against
    /// another build of it).
    pub fn start_with_env(data: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let port = testkit::free_port();
        let bin = std::env::var_os("CHAT_BACKEND_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_chat-backend").into());
        let mut command = testkit::service_command(bin, port, data);
        command.envs(env.iter().copied());
        Self {
            process: testkit::Process::spawn("chat-backend", &mut command, Some(port)),
            base: format!("http://127.0.0.1:{port}"),
            port,
        }
    }

    /// SIGTERM and wait: a graceful stop.
    pub fn stop(mut self) {
        let status = self.process.stop();
        assert!(status.success(), "chat-backend exited with {status}");
    }

    /// Its resident memory, MiB (`VmRSS` in `/proc/<pid>/status`).
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id()))
            .expect("/proc status");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib / 1024.0
    }
}

/// `GET url` with the bearer `token`, as JSON.
pub async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> serde_json::Value {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json")
}
