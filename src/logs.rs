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
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
