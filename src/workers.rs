//! The transform workers: `transform_workers` threads taking CPU-bound jobs (decode,
//! transform, encode) from one queue, in the order they came.
//!
//! A worker starts the next job the moment its last one ends, on its own thread. With
//! a semaphore in front of tokio's blocking pool, as before, a job's end released a
//! permit, and the next job started only once the task waiting for that permit had
//! been scheduled on its runtime (pinned to a core that might be busy with another
//! job) and had handed its closure to the pool: a core could idle meanwhile.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::{image_work_panicked, Error, ErrorKind, Result};

type Job = Box<dyn FnOnce() + Send>;

/// The worker threads and their queue. Dropping it lets the threads finish the jobs
/// queued and exit.
pub struct Workers {
    jobs: mpsc::Sender<Job>,
    count: usize,
    /// Jobs a worker is running now.
    running: Arc<AtomicUsize>,
    /// Jobs queued that no worker has started.
    waiting: Arc<AtomicUsize>,
    /// How many may wait beyond the idle workers before a job is refused.
    max_waiting: usize,
}

impl Workers {
    /// Starts `count` worker threads.
    pub fn new(count: usize, max_waiting: usize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..count {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("transform-{index}"))
                .spawn(move || loop {
                    // The lock is held while waiting: one idle worker waits on the
                    // queue, the others on the lock.
                    let job = queue.lock().expect("job queue lock").recv();
                    match job {
                        Ok(job) => job(),
                        Err(mpsc::RecvError) => break,
                    }
                })?;
        }
        Ok(Self {
            jobs,
            count,
            running: Arc::default(),
            waiting: Arc::default(),
            max_waiting,
        })
    }

    /// Runs `work` on a worker and waits for its result. 429 when `max_waiting` jobs
    /// already wait for a worker; a job whose caller has gone by the time a worker
    /// takes it is dropped unrun. A panic in `work` (a decoder bug tripped by hostile
    /// bytes) becomes a 422 for that image.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let waiting = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        let idle = self
            .count
            .saturating_sub(self.running.load(Ordering::SeqCst));
        if waiting > self.max_waiting + idle {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::new(
                ErrorKind::TooManyRequests,
                "too_many_requests",
                "the transform queue is full; retry in a moment",
            ));
        }
        let (result, answer) = oneshot::channel();
        let (running, queued) = (Arc::clone(&self.running), Arc::clone(&self.waiting));
        let job: Job = Box::new(move || {
            queued.fetch_sub(1, Ordering::SeqCst);
            if result.is_closed() {
                return;
            }
            running.fetch_add(1, Ordering::SeqCst);
            let outcome = catch_unwind(AssertUnwindSafe(work));
            running.fetch_sub(1, Ordering::SeqCst);
            // The caller may have gone meanwhile; the result is then dropped.
            let _ = result.send(outcome);
        });
        self.jobs
            .send(job)
            .map_err(|_| Error::internal("the transform workers have stopped"))?;
        match answer.await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(panic)) => Err(image_work_panicked(panic.as_ref())),
            Err(_) => Err(Error::internal("the transform workers have stopped")),
        }
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Jobs waiting for a worker.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    #[tokio::test]
    async fn a_panicking_job_is_a_422_and_its_worker_goes_on() {
        let workers = Workers::new(1, 4).unwrap();
        let panicked = workers
            .run(|| -> Result<()> { panic!("a decoder bug") })
            .await
            .unwrap_err();
        assert_eq!(panicked.kind, ErrorKind::Undecodable);
        assert_eq!(workers.run(|| Ok(6 * 7)).await.unwrap(), 42);
        assert_eq!((workers.running(), workers.waiting()), (0, 0));
    }

    #[tokio::test]
    async fn jobs_beyond_the_queue_are_refused_and_callers_gone_are_skipped() {
        let workers = Arc::new(Workers::new(1, 1).unwrap());
        // One job holds the only worker until told to finish.
        let (finish, finished) = channel::<()>();
        let busy = tokio::spawn({
            let workers = Arc::clone(&workers);
            async move { workers.run(move || Ok(finished.recv().is_ok())).await }
        });
        while workers.running() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // One may wait; its caller gives up, so it must never run.
        let ran = Arc::new(AtomicUsize::new(0));
        let abandoned = tokio::spawn({
            let (workers, ran) = (Arc::clone(&workers), Arc::clone(&ran));
            async move {
                let job = workers.run(move || Ok(ran.fetch_add(1, Ordering::SeqCst)));
                tokio::time::timeout(Duration::from_millis(50), job).await
            }
        });
        while workers.waiting() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // A second would wait beyond the queue: 429 at once.
        let refused = workers.run(|| Ok(())).await.unwrap_err();
        assert_eq!(refused.kind, ErrorKind::TooManyRequests);
        assert!(
            abandoned.await.unwrap().is_err(),
            "the waiting job timed out"
        );
        finish.send(()).unwrap();
        assert!(busy.await.unwrap().unwrap());
        // The worker has passed over the abandoned job by the time it runs this one.
        assert_eq!(workers.run(|| Ok(())).await.ok(), Some(()));
        assert_eq!(ran.load(Ordering::SeqCst), 0, "a job nobody waits for ran");
        assert_eq!((workers.running(), workers.waiting()), (0, 0));
    }
}
