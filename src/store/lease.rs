//! Leases: which instance computes a transform when several share one store.
//!
//! A lease is a small object at `leases/<derived key>`, written create-if-absent, so of
//! all the instances that miss the cache at once exactly one creates it and computes;
//! the others poll for the result. The lease names its expiry, and an expired lease
//! may be removed by anyone, so a holder that crashed delays the others by at most the
//! lease time. Leases live outside the `<h0>/<h1>/` shards and are never copied.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::{Put, Store};
use crate::error::Result;

/// The folder leases live in.
pub const LEASES: &str = "leases";

/// What a lease object holds.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseBody {
    expires_at: DateTime<Utc>,
    /// For people reading the store: which process holds it.
    holder: String,
}

/// The outcome of trying to take a lease.
#[derive(Debug)]
pub enum Lease {
    /// The lease is ours: compute, store the result, then release it.
    Acquired(HeldLease),
    /// Someone else holds it until this time.
    HeldUntil(DateTime<Utc>),
    /// Nobody holds it (it was released between our two requests).
    Free,
}

/// The leases this process took and has not deleted yet, shared by every clone of its
/// [`Store`]: what [`Store::release_held_leases`] deletes when the server stops without
/// waiting for the work under them.
#[derive(Debug, Default)]
pub(super) struct HeldLeases(Mutex<HashSet<Path>>);

impl HeldLeases {
    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<Path>> {
        self.0.lock().expect("held leases lock")
    }
}

impl From<Option<DateTime<Utc>>> for Lease {
    fn from(expiry: Option<DateTime<Utc>>) -> Self {
        expiry.map_or(Lease::Free, Lease::HeldUntil)
    }
}

/// A lease this process took. [`HeldLease::release`] deletes it once the work under
/// it is done. If that work is dropped first (its client went away, the server shut
/// down), dropping the lease deletes it in the background, so that the next request
/// for the key does not wait out the lease's time for a result that will not come.
#[derive(Debug)]
pub struct HeldLease {
    store: Store,
    /// `None` once released.
    path: Option<Path>,
}

impl HeldLease {
    pub async fn release(mut self) {
        if let Some(path) = self.path.take() {
            delete_lease(&self.store, &path).await;
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let Some(path) = self.path.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            runtime.spawn(async move { delete_lease(&store, &path).await });
        }
    }
}

/// Deletes a lease this process took. One it could not delete stays on the held list,
/// for the stop to try again.
async fn delete_lease(store: &Store, path: &Path) {
    match store.delete(path).await {
        Ok(()) => {
            store.held_leases.held().remove(path);
        }
        Err(err) => {
            tracing::warn!(lease = %path, error = %err, "could not release a lease; it will expire")
        }
    }
}

impl Store {
    /// `leases/<derived key>`: the lease on computing the object at `derived`.
    pub fn lease_path(derived: &Path) -> Path {
        Path::from(format!("{LEASES}/{derived}"))
    }

    /// Takes the lease at `path` for `ttl`, or says who holds it.
    pub async fn try_lease(&self, path: &Path, ttl: Duration) -> Result<Lease> {
        let body = LeaseBody {
            expires_at: Utc::now() + ttl,
            holder: format!("pid {}", std::process::id()),
        };
        let json = serde_json::to_vec(&body).expect("lease serialises");
        match self.put_if_absent(path, json.into()).await? {
            Put::Created => {
                self.held_leases.held().insert(path.clone());
                Ok(Lease::Acquired(HeldLease {
                    store: self.clone(),
                    path: Some(path.clone()),
                }))
            }
            Put::AlreadyThere => self.lease_expiry(path).await.map(Lease::from),
        }
    }

    /// Deletes every lease this process still holds; returns how many. The server calls
    /// it when it stops: work it stopped waiting for is dropped with the runtime, too
    /// late for `HeldLease`'s drop to delete its lease, and another instance would
    /// wait out the lease's time for a result that will not come.
    pub async fn release_held_leases(&self) -> usize {
        let paths: Vec<Path> = self.held_leases.held().iter().cloned().collect();
        futures::future::join_all(paths.iter().map(|path| delete_lease(self, path))).await;
        paths.len()
    }

    /// When the lease at `path` expires, or `None` if nobody holds it. A lease that
    /// cannot be read (a torn or foreign object) counts as expired.
    pub async fn lease_expiry(&self, path: &Path) -> Result<Option<DateTime<Utc>>> {
        Ok(self.read(path).await?.map(|bytes| {
            serde_json::from_slice::<LeaseBody>(&bytes)
                .map_or(DateTime::<Utc>::MIN_UTC, |body| body.expires_at)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::S3Settings;

    #[tokio::test]
    async fn one_taker_until_released() {
        let store = Store::open("memory://", &S3Settings::default()).unwrap();
        let path = Store::lease_path(&Path::from("a/b/ab.e2.thumbnail.jpg"));
        assert_eq!(path.as_ref(), "leases/a/b/ab.e2.thumbnail.jpg");
        let ttl = Duration::from_secs(60);
        let Lease::Acquired(held) = store.try_lease(&path, ttl).await.unwrap() else {
            panic!("the first taker must get the lease");
        };
        let Lease::HeldUntil(until) = store.try_lease(&path, ttl).await.unwrap() else {
            panic!("a second taker must see the lease held");
        };
        assert!(until > Utc::now() + Duration::from_secs(50));
        held.release().await;
        assert_eq!(store.lease_expiry(&path).await.unwrap(), None);
        let taken = store.try_lease(&path, ttl).await.unwrap();
        assert!(matches!(taken, Lease::Acquired(_)), "{taken:?}");
    }

    #[tokio::test]
    async fn a_lease_dropped_unreleased_is_deleted_in_the_background() {
        let store = Store::open("memory://", &S3Settings::default()).unwrap();
        let path = Store::lease_path(&Path::from("a/b/ab.e2.thumbnail.jpg"));
        let taken = store
            .try_lease(&path, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(matches!(taken, Lease::Acquired(_)), "{taken:?}");
        drop(taken);
        for _ in 0..100 {
            if store.lease_expiry(&path).await.unwrap().is_none() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the dropped lease is still in the store");
    }

    /// A stop deletes what is still held and only that: a released lease is off the
    /// list, so a stop does not delete the lease another instance took after it.
    #[tokio::test]
    async fn a_stop_deletes_the_leases_still_held() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().to_str().unwrap();
        let [ours, other] = [(); 2].map(|()| Store::open(url, &S3Settings::default()).unwrap());
        let ttl = Duration::from_secs(60);
        let [released, held] = ["a/b/ab.e2.blur", "a/b/ab.e2.thumbnail.jpg"]
            .map(|key| Store::lease_path(&Path::from(key)));
        let Lease::Acquired(done) = ours.try_lease(&released, ttl).await.unwrap() else {
            panic!("the lease is free");
        };
        done.release().await;
        let Lease::Acquired(_others) = other.try_lease(&released, ttl).await.unwrap() else {
            panic!("the released lease is free");
        };
        let Lease::Acquired(_running) = ours.try_lease(&held, ttl).await.unwrap() else {
            panic!("the lease is free");
        };
        assert_eq!(ours.clone().release_held_leases().await, 1);
        assert_eq!(ours.lease_expiry(&held).await.unwrap(), None);
        assert!(ours.lease_expiry(&released).await.unwrap().is_some());
        assert_eq!(ours.release_held_leases().await, 0);
    }
}
