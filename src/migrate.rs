//! `progimage migrate`: copies every object of one store into another, for example a
//! filesystem store into a bucket when a single box is outgrown.
//!
//! Both stores share one layout, so copying objects as they are is the whole job. Each
//! copy is a create-if-absent put, which makes a run idempotent and resumable: what the
//! destination already has is skipped, so after an interruption the same command
//! carries on. Blobs and cached transforms go first and sidecars last, so the
//! destination never holds a sidecar whose blob is missing. Leases are not copied.

use std::collections::HashSet;
use std::sync::Mutex;

use futures::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use object_store::path::Path;

use crate::error::Result;
use crate::store::{Listed, Put, Store, LEASES};

/// How many objects are copied at once.
const CONCURRENCY: usize = 8;

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub copied: u64,
    pub copied_bytes: u64,
    /// Already in the destination.
    pub skipped: u64,
    pub failed: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "copied {} objects ({} bytes), skipped {} already there, {} failed",
            self.copied, self.copied_bytes, self.skipped, self.failed
        )
    }
}

/// Copies everything in `from` that `to` lacks, reporting progress on `progress`.
/// Fails only when the source cannot be listed; a failed copy is counted and logged.
pub async fn migrate(from: &Store, to: &Store, progress: &ProgressBar) -> Result<Summary> {
    let leases = format!("{LEASES}/");
    let mut objects: Vec<Listed> = from
        .list(None)
        .try_filter(|object| futures::future::ready(!object.key.starts_with(&leases)))
        .try_collect()
        .await?;
    // Sidecars last; within each group, a stable order makes progress readable.
    objects.sort_by(|a, b| (is_sidecar(a), &a.key).cmp(&(is_sidecar(b), &b.key)));
    progress.set_length(objects.len() as u64);

    let summary = Mutex::new(Summary::default());
    let failed_blobs = Mutex::new(HashSet::new());
    let (blobs, sidecars): (Vec<_>, Vec<_>) = objects.into_iter().partition(|o| !is_sidecar(o));
    for phase in [blobs, sidecars] {
        futures::stream::iter(phase)
            .for_each_concurrent(CONCURRENCY, |object| {
                let (summary, failed_blobs) = (&summary, &failed_blobs);
                async move {
                    let blob = object.key.trim_end_matches(".meta").to_string();
                    let outcome = if is_sidecar(&object)
                        && failed_blobs.lock().expect("lock").contains(&blob)
                    {
                        None
                    } else {
                        copy(from, to, &object).await
                    };
                    let mut summary = summary.lock().expect("lock");
                    match outcome {
                        Some(Put::Created) => {
                            summary.copied += 1;
                            summary.copied_bytes += object.size;
                        }
                        Some(Put::AlreadyThere) => summary.skipped += 1,
                        None => {
                            summary.failed += 1;
                            failed_blobs.lock().expect("lock").insert(object.key);
                        }
                    }
                    progress.inc(1);
                }
            })
            .await;
    }
    progress.finish_and_clear();
    Ok(summary.into_inner().expect("lock"))
}

/// Copies one object unless the destination has it; `None` when it failed (logged).
async fn copy(from: &Store, to: &Store, object: &Listed) -> Option<Put> {
    let path = Path::from(object.key.as_str());
    let attempt = async {
        if to.size(&path).await?.is_some() {
            return Ok(Put::AlreadyThere);
        }
        match from.read(&path).await? {
            Some(bytes) => to.put_if_absent(&path, bytes).await,
            // Deleted from the source since it was listed: nothing to copy.
            None => Ok(Put::AlreadyThere),
        }
    };
    match attempt.await {
        Ok(put) => Some(put),
        Err(err) => {
            tracing::warn!(key = %object.key, error = %err, "could not copy");
            None
        }
    }
}

fn is_sidecar(object: &Listed) -> bool {
    object.key.ends_with(".meta")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::S3Settings;

    #[tokio::test]
    async fn copies_what_is_missing_and_skips_the_rest() {
        let memory = || Store::open("memory://", &S3Settings::default()).unwrap();
        let (from, to) = (memory(), memory());
        for key in [
            "a/b/ab",
            "a/b/ab.meta",
            "a/b/ab.e2.thumbnail.jpg",
            "leases/a/b/x",
        ] {
            from.put_if_absent(&Path::from(key), key.as_bytes().to_vec().into())
                .await
                .unwrap();
        }
        let first = migrate(&from, &to, &ProgressBar::hidden()).await.unwrap();
        assert_eq!((first.copied, first.skipped, first.failed), (3, 0, 0));
        assert_eq!(first.copied_bytes, (6 + 11 + 23) as u64);
        let copied = to.read(&Path::from("a/b/ab.meta")).await.unwrap().unwrap();
        assert_eq!(copied, "a/b/ab.meta");
        assert_eq!(to.size(&Path::from("leases/a/b/x")).await.unwrap(), None);

        let again = migrate(&from, &to, &ProgressBar::hidden()).await.unwrap();
        assert_eq!((again.copied, again.skipped, again.failed), (0, 3, 0));
    }
}
