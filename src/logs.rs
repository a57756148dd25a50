//! Where log lines go: stderr, in batches written by a thread of their own.
//!
//! The request log is a line per request. Written by the worker that served the
//! request, one `write` each, it cost a fifth of the throughput of cached reads;
//! handed over one line at a time to a logging thread (tracing-appender's channel),
//! the wake-ups and the receiver's spinning still cost a tenth. Here a line is only
//! appended to a shared buffer under a mutex, and a thread writes whatever has
//! gathered every 50 ms, or at once when 256 KiB have. Not lossy: with 8 MiB unwritten
//! (stderr blocked), loggers wait for the writer rather than drop lines.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

const INTERVAL: Duration = Duration::from_millis(50);
/// Buffered bytes that wake the writer before its interval is up.
const SOON: usize = 256 * 1024;
/// Buffered bytes at which loggers wait for the writer.
const MOST: usize = 8 * 1024 * 1024;

#[derive(Default)]
struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Signalled when the buffer passes `SOON`, or at shutdown.
    filled: Condvar,
    /// Signalled when the writer has taken the buffer.
    taken: Condvar,
    closing: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A logger that panicked mid-append leaves at worst a torn line.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The `MakeWriter` for tracing-subscriber's formatter.
#[derive(Clone)]
pub struct BatchedStderr(Arc<Shared>);

/// Writes what is left and stops the writer thread when dropped: keep it alive
/// until the process is done logging.
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BatchedStderr {
    pub fn start() -> (Self, Flusher) {
        Self::writing_to(std::io::stderr())
    }

    fn writing_to(sink: impl Write + Send + 'static) -> (Self, Flusher) {
        let shared = Arc::new(Shared::default());
        let writer = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("progimage-log".to_string())
            .spawn(move || write_batches(&writer, sink))
            .expect("a thread for the log writer");
        (
            Self(Arc::clone(&shared)),
            Flusher {
                shared,
                thread: Some(thread),
            },
        )
    }
}

fn write_batches(shared: &Shared, mut sink: impl Write) {
    loop {
        let closing = shared.closing.load(Ordering::Acquire);
        let batch = {
            let mut pending = shared.lock();
            if pending.len() < SOON && !closing {
                pending = shared
                    .filled
                    .wait_timeout(pending, INTERVAL)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
            std::mem::take(&mut *pending)
        };
        shared.taken.notify_all();
        if !batch.is_empty() {
            // Nowhere to report a failure to write the log.
            let _ = sink.write_all(&batch);
        }
        if closing {
            return;
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.filled.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's writer: appends to the shared buffer.
pub struct Appender<'a>(&'a Shared);

impl Write for Appender<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.0.lock();
        while pending.len() >= MOST && !self.0.closing.load(Ordering::Acquire) {
            self.0.filled.notify_all();
            pending = self
                .0
                .taken
                .wait(pending)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        pending.extend_from_slice(bytes);
        if pending.len() >= SOON {
            self.0.filled.notify_all();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = Appender<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Appender(&self.0)
    }
}

/// Where and how request lines go: set once by `main`.
static REQUEST_LOG: OnceLock<RequestLog> = OnceLock::new();

struct RequestLog {
    writer: BatchedStderr,
    json: bool,
}

/// Sends request lines to `writer`, as JSON objects or as text lines shaped like the
/// other log lines. Until this is called (tests, fuzzing), request lines are dropped.
pub fn log_requests(writer: BatchedStderr, json: bool) {
    let _ = REQUEST_LOG.set(RequestLog { writer, json });
}

/// The one line logged for each request.
///
/// Formatted by hand rather than as a `tracing` event: through tracing-subscriber's
/// formatter (a visitor a field, the timestamp formatted each time) the line cost a
/// tenth of a cached GET's CPU (DECISIONS, "Request logs off the request path").
/// Still filtered as an INFO event of `progimage::http` (`RUST_LOG=warn` drops it), and
/// still in the shape of the other lines, text or JSON.
pub struct RequestLine<'a> {
    pub id: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub ms: f64,
    pub bytes: u64,
    pub cache: &'a str,
}

thread_local! {
    /// This thread's line buffer, and the formatted second of its last line.
    static LINE: std::cell::RefCell<(Vec<u8>, i64, String)> =
        const { std::cell::RefCell::new((Vec::new(), i64::MIN, String::new())) };
}

impl RequestLine<'_> {
    pub fn write(&self) {
        let Some(log) = REQUEST_LOG.get() else {
            return;
        };
        if !tracing::enabled!(target: "progimage::http", tracing::Level::INFO) {
            return;
        }
        LINE.with_borrow_mut(|(line, second, stamp)| {
            line.clear();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let secs = now.as_secs() as i64;
            if *second != secs {
                *second = secs;
                *stamp = chrono::DateTime::from_timestamp(secs, 0)
                    .unwrap_or_default()
                    .format("%Y-%m-%dT%H:%M:%S")
                    .to_string();
            }
            let timestamp = format_args!("{stamp}.{:06}Z", now.subsec_micros());
            if log.json {
                self.json(line, timestamp);
            } else {
                self.text(line, timestamp);
            }
            let _ = log.writer.make_writer().write_all(line);
        });
    }

    fn text(&self, line: &mut Vec<u8>, timestamp: std::fmt::Arguments) {
        let _ = writeln!(
            line,
            "{timestamp}  INFO request{{id={}}}: progimage::http: request method={} route=\"{}\" \
             path={} status={} ms={:.3} bytes={} cache=\"{}\"",
            self.id,
            self.method,
            self.route,
            self.path,
            self.status,
            self.ms,
            self.bytes,
            self.cache
        );
    }

    fn json(&self, line: &mut Vec<u8>, timestamp: std::fmt::Arguments) {
        // Strings the client chose (the id, the path) are escaped by serde_json.
        let string = |line: &mut Vec<u8>, value: &str| {
            let _ = serde_json::to_writer(&mut *line, value);
        };
        let _ = write!(line, "{{\"timestamp\":\"{timestamp}\",\"level\":\"INFO\",\"fields\":{{\"message\":\"request\",\"method\":");
        string(line, self.method);
        line.extend_from_slice(b",\"route\":");
        string(line, self.route);
        line.extend_from_slice(b",\"path\":");
        string(line, self.path);
        let _ = write!(
            line,
            ",\"status\":{},\"ms\":{:.3},\"bytes\":{},\"cache\":",
            self.status, self.ms, self.bytes
        );
        string(line, self.cache);
        line.extend_from_slice(b"},\"target\":\"progimage::http\",\"span\":{\"id\":");
        string(line, self.id);
        line.extend_from_slice(b",\"name\":\"request\"},\"spans\":[{\"id\":");
        string(line, self.id);
        line.extend_from_slice(b",\"name\":\"request\"}]}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read, that counts its writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let mut sink = self.0.lock().unwrap();
            sink.0.extend_from_slice(bytes);
            sink.1 += 1;
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn example(id: &str) -> RequestLine<'_> {
        RequestLine {
            id,
            method: "GET",
            route: "transform",
            path: "/images/ab/thumbnail/",
            status: 200,
            ms: 0.1234567,
            bytes: 3300,
            cache: "HIT",
        }
    }

    #[test]
    fn request_lines_as_text_read_like_the_other_lines() {
        let mut line = Vec::new();
        example("r-1").text(&mut line, format_args!("2026-12-01T04:54:43.174056Z"));
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2026-12-01T04:54:43.174056Z  INFO request{id=r-1}: progimage::http: request \
             method=GET route=\"transform\" path=/images/ab/thumbnail/ status=200 ms=0.123 \
             bytes=3300 cache=\"HIT\"\n"
        );
    }

    #[test]
    fn request_lines_as_json_escape_what_the_client_sent() {
        let mut line = Vec::new();
        example("a\"b\\c").json(&mut line, format_args!("2026-12-01T04:54:43.174056Z"));
        assert_eq!(line.last(), Some(&b'\n'));
        let parsed: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "timestamp": "2026-12-01T04:54:43.174056Z",
                "level": "INFO",
                "fields": {
                    "message": "request", "method": "GET", "route": "transform",
                    "path": "/images/ab/thumbnail/", "status": 200, "ms": 0.123,
                    "bytes": 3300, "cache": "HIT"
                },
                "target": "progimage::http",
                "span": {"id": "a\"b\\c", "name": "request"},
                "spans": [{"id": "a\"b\\c", "name": "request"}],
            })
        );
    }

    #[test]
    fn lines_are_written_in_order_in_few_writes_and_all_by_the_end() {
        let sink = Sink::default();
        let (writer, flusher) = BatchedStderr::writing_to(sink.clone());
        for n in 0..1000 {
            writeln!(writer.make_writer(), "line {n}").unwrap();
        }
        drop(flusher);
        let (written, writes) = sink.0.lock().unwrap().clone();
        let expected: String = (0..1000).map(|n| format!("line {n}\n")).collect();
        assert_eq!(String::from_utf8(written).unwrap(), expected);
        assert!(writes < 100, "{writes} writes for 1000 lines");
    }

    #[test]
    fn a_full_buffer_makes_loggers_wait_for_the_writer() {
        let sink = Sink::default();
        let (writer, flusher) = BatchedStderr::writing_to(sink.clone());
        let line = vec![b'x'; 64 * 1024];
        // 16 MiB through an 8 MiB bound: loggers wait, nothing is dropped.
        for _ in 0..256 {
            writer.make_writer().write_all(&line).unwrap();
            assert!(writer.0.lock().len() <= MOST + line.len());
        }
        drop(flusher);
        assert_eq!(sink.0.lock().unwrap().0.len(), 256 * line.len());
    }
}
