//! A real S3-compatible server for the tests: moto's server on loopback, with one
//! bucket. Its create-if-absent puts are atomic, which the multi-instance tests rely
//! on (s3s-fs 0.14 checks `If-None-Match` and then writes, so concurrent creates can
//! all succeed there; see DECISIONS.md).
//!
//! moto is looked for in the Python that `python3` runs and installed with pip on
//! first use (`.ci/run` installs it up front). Each test binary starts one shared
//! server. An outage is simulated with an [`S3Proxy`] in front of it, which can refuse
//! connections and then come back, while moto keeps the objects.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use progimage::config::S3Settings;
use tokio::task::JoinSet;

pub const BUCKET: &str = "progimage";
/// moto accepts any credentials; the requests are signed all the same.
const ACCESS_KEY: &str = "progimage-test";
const SECRET_KEY: &str = "progimage-test-secret";
const MOTO: &str = "moto[server]==5.2.1";

/// One moto server process; killed when dropped, and when the test process dies.
pub struct S3Server {
    pub addr: SocketAddr,
    child: Child,
}

impl S3Server {
    /// Starts a server on a free port, with the test bucket.
    pub fn start() -> Self {
        super::ensure_python_module("moto.server", MOTO);
        let addr = free_port();
        let mut command = Command::new("python3");
        command
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(addr.port().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_tied_to_this_process(command);
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto did not start listening on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        create_bucket(addr);
        Self { addr, child }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Settings that reach this server (or a proxy in front of it, at `addr`).
    pub fn settings_via(&self, addr: SocketAddr) -> S3Settings {
        S3Settings {
            endpoint: format!("http://{addr}"),
            region: "us-east-1".into(),
            allow_http: true,
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            ..S3Settings::default()
        }
    }

    pub fn settings(&self) -> S3Settings {
        self.settings_via(self.addr)
    }

    /// Sends the server a signal: SIGSTOP freezes it (connections are accepted by the
    /// kernel and never answered: a hung store), SIGCONT brings it back with its objects.
    pub fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// The `AWS_*` variables that reach this server, for spawned processes.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server shared by every test in this binary.
pub fn shared() -> &'static S3Server {
    static SHARED: OnceLock<S3Server> = OnceLock::new();
    SHARED.get_or_init(S3Server::start)
}

/// A fresh `s3://` store URL on the shared server: a new prefix in the test bucket.
pub fn fresh_store_url() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("s3://{BUCKET}/t{n}")
}

/// A TCP proxy to the S3 server that can be cut off (connections refused, open ones
/// dropped) and restored on the same address: the store going away and coming back.
pub struct S3Proxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    tasks: JoinSet<()>,
}

impl S3Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let mut proxy = Self {
            addr: free_port(),
            target,
            tasks: JoinSet::new(),
        };
        proxy.restore().await;
        proxy
    }

    /// Refuses new connections and drops open ones.
    pub fn cut(&mut self) {
        self.tasks.abort_all();
    }

    /// Accepts and forwards connections again.
    pub async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let target = self.target;
        self.tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
    }
}

/// `PUT /<bucket>`; moto needs no signature for it.
fn create_bucket(addr: SocketAddr) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "PUT /{BUCKET} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "creating the bucket: {reply}"
    );
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts `command` from a thread that never ends, with the kernel asked to kill the
/// child when that thread's process dies: a server must not outlive its tests, and
/// static values are never dropped.
fn spawn_tied_to_this_process(mut command: Command) -> Child {
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        sender.send(command.spawn()).unwrap();
        loop {
            std::thread::park();
        }
    });
    receiver.recv().unwrap().expect("python3 starts moto")
}
