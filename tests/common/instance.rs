//! Real `progimage serve` processes, for tests of several instances on one store,
//! of signals and of crashes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `progimage serve` child process listening on an ephemeral loopback port.
pub struct Instance {
    pub base: String,
    child: Child,
    /// Every log line after the first, as the process writes them.
    lines: mpsc::Receiver<String>,
}

impl Instance {
    /// Starts `progimage serve --store <store>` with extra environment variables
    /// (which may replace the default `RUST_LOG=info`).
    pub fn spawn(store: &str, env: &[(&str, String)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_progimage"))
            .args(["serve", "--listen", "127.0.0.1:0", "--store", store])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("progimage starts");
        // The address is in the first log line; the rest of the log is drained (and
        // echoed, so a failing test shows it) for as long as the process runs.
        let stderr = child.stderr.take().unwrap();
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[instance] {line}");
                let _ = sender.send(line);
            }
        });
        let addr = receiver
            .recv_timeout(Duration::from_secs(30))
            .ok()
            .and_then(|line| {
                Some(
                    line.split("listen=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .to_string(),
                )
            })
            .expect("progimage logs its address first");
        Self {
            base: format!("http://{addr}"),
            child,
            lines: receiver,
        }
    }

    /// The log lines written since the first, up to the process's exit (call after
    /// `wait`; blocks until its stderr closes).
    pub fn log_lines(&self) -> Vec<String> {
        self.lines.iter().collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a PNG body to `/`.
    pub async fn upload_png(&self, client: &reqwest::Client, png: Vec<u8>) -> reqwest::Response {
        client
            .post(self.url("/"))
            .header("content-type", "image/png")
            .body(png)
            .send()
            .await
            .unwrap()
    }

    /// Uploads `png`, which must be stored (201); its id.
    pub async fn upload_id(&self, client: &reqwest::Client, png: Vec<u8>) -> String {
        let response = self.upload_png(client, png).await;
        assert_eq!(response.status(), 201);
        let reply: serde_json::Value = response.json().await.unwrap();
        reply["id"].as_str().unwrap().to_string()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (SIGTERM, SIGKILL, ...).
    pub fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
