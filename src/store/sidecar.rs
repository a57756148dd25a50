//! The JSON sidecar kept beside each blob at `<h0>/<h1>/<id>.meta`, and how it is
//! read and replaced.
//!
//! It keeps the original ProgImage `"file_name"` key and adds what we know at upload.
//! Every added field is optional so that sidecars written by the original filebase
//! (which hold little more than `file_name`) are read as they are, and fields we do
//! not know are carried through untouched.
//!
//! Sidecars are the one kind of object that changes (`PATCH .../meta/`), so they are
//! replaced with a compare-and-swap: a conditional put naming the version that was
//! read (S3's `If-Match`, the memory store's version counter), and on a store without
//! conditional updates (a directory) a short lock object under `leases/` around
//! read-compare-write. Their entity tag is the SHA-1 of the stored JSON, the same on
//! every backend and every instance.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::{ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use super::{ImageId, Lease, Put, Store};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// The file name the client uploaded, or `<id>.<ext>` when it sent none.
    pub file_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The format sniffed from the bytes: `jpeg`, `png`, `gif`, `webp`, `bmp`, `tiff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// Labels for grouping and filtering (`GET /images/?tag=`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    /// Keys written by other tools, kept as they are.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl Sidecar {
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|err| {
            Error::internal(format!("a sidecar in the store is not valid JSON: {err}"))
        })
    }

    pub fn to_json(&self) -> Bytes {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec_pretty(self)
            .expect("sidecar serialises")
            .into()
    }

    /// The entity tag of this sidecar as it would be stored.
    pub fn etag(&self) -> String {
        etag_of(&self.to_json())
    }
}

/// A sidecar as read from the store, with what a conditional replace needs.
#[derive(Debug, Clone)]
pub struct StoredSidecar {
    pub sidecar: Sidecar,
    /// The SHA-1 of the stored JSON, unquoted.
    pub etag: String,
    version: UpdateVersion,
}

/// How long a replace waits for another instance's lock on the same sidecar.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// How long a lock lives if its holder dies without releasing it.
const LOCK_TTL: Duration = Duration::from_secs(10);

fn etag_of(json: &[u8]) -> String {
    Sha1::digest(json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Store {
    /// The sidecar of `id`, or `None` if there is none.
    pub async fn read_sidecar(&self, id: &ImageId) -> Result<Option<Sidecar>> {
        Ok(self
            .read_stored_sidecar(id)
            .await?
            .map(|stored| stored.sidecar))
    }

    /// The sidecar of `id` with its version, or `None` if there is none.
    pub async fn read_stored_sidecar(&self, id: &ImageId) -> Result<Option<StoredSidecar>> {
        let result = match self.objects.get(&Self::sidecar_path(id)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let version = UpdateVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let bytes = result.bytes().await?;
        Ok(Some(StoredSidecar {
            sidecar: Sidecar::from_json(&bytes)?,
            etag: etag_of(&bytes),
            version,
        }))
    }

    /// Writes the sidecar of `id` unless one is there already.
    pub async fn write_sidecar(&self, id: &ImageId, sidecar: &Sidecar) -> Result<Put> {
        self.put_if_absent(&Self::sidecar_path(id), sidecar.to_json())
            .await
    }

    /// Replaces the sidecar of `id` with `new` if it is still `current` (`None`: if
    /// there is still none). `false` when it changed meanwhile: read it again.
    pub async fn replace_sidecar(
        &self,
        id: &ImageId,
        current: Option<&StoredSidecar>,
        new: &Sidecar,
    ) -> Result<bool> {
        let Some(current) = current else {
            return Ok(self.write_sidecar(id, new).await? == Put::Created);
        };
        let path = Self::sidecar_path(id);
        let options = PutOptions {
            mode: PutMode::Update(current.version.clone()),
            ..PutOptions::default()
        };
        match self
            .durable
            .put_opts(&path, new.to_json().into(), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Ok(false),
            Err(object_store::Error::NotImplemented { .. }) => {
                self.replace_under_lock(id, &current.etag, new).await
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Compare-and-swap for stores without conditional updates: a lock object taken
    /// create-if-absent (which every backend makes atomic) around read, compare and
    /// an atomic overwrite.
    async fn replace_under_lock(&self, id: &ImageId, etag: &str, new: &Sidecar) -> Result<bool> {
        let path = Self::sidecar_path(id);
        let lock = Self::lease_path(&path);
        let deadline = Instant::now() + LOCK_WAIT;
        let held = loop {
            match self.try_lease(&lock, LOCK_TTL).await? {
                Lease::Acquired(held) => break held,
                Lease::HeldUntil(until) if until < Utc::now() => self.delete(&lock).await?,
                Lease::HeldUntil(_) | Lease::Free if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Lease::HeldUntil(_) | Lease::Free => {
                    return Err(Error::unavailable(format!(
                        "the metadata of {id} is locked by another writer"
                    )))
                }
            }
        };
        let swapped = match self.read(&path).await {
            Ok(Some(stored)) if etag_of(&stored) == etag => self
                .durable
                .put(&path, new.to_json().into())
                .await
                .map(|_| true)
                .map_err(Error::from),
            Ok(_) => Ok(false),
            Err(err) => Err(err),
        };
        held.release().await;
        swapped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::S3Settings;
    use futures::StreamExt;

    #[test]
    fn reads_an_original_progimage_sidecar_and_keeps_unknown_keys() {
        let sidecar = Sidecar::from_json(br#"{"file_name": "cat.jpg", "owner": 7}"#).unwrap();
        assert_eq!(sidecar.file_name, "cat.jpg");
        assert_eq!(sidecar.width, None);
        let again = Sidecar::from_json(&sidecar.to_json()).unwrap();
        assert_eq!(again.other["owner"], 7);
    }

    #[tokio::test]
    async fn a_replace_from_a_stale_read_fails_on_every_backend() {
        let dir = tempfile::tempdir().unwrap();
        let id = ImageId::parse(&"ab".repeat(20)).unwrap();
        for url in ["memory://", dir.path().to_str().unwrap()] {
            let store = Store::open(url, &S3Settings::default()).unwrap();
            let first = Sidecar {
                file_name: "a.png".into(),
                ..Sidecar::default()
            };
            assert!(store.replace_sidecar(&id, None, &first).await.unwrap());
            assert!(!store.replace_sidecar(&id, None, &first).await.unwrap());
            let read = store.read_stored_sidecar(&id).await.unwrap().unwrap();
            assert_eq!(read.etag, first.etag());
            let second = Sidecar {
                name: Some("second".into()),
                ..first.clone()
            };
            assert!(
                store
                    .replace_sidecar(&id, Some(&read), &second)
                    .await
                    .unwrap(),
                "{url}"
            );
            let third = Sidecar {
                name: Some("third".into()),
                ..first.clone()
            };
            assert!(
                !store
                    .replace_sidecar(&id, Some(&read), &third)
                    .await
                    .unwrap(),
                "{url}"
            );
            let now = store.read_sidecar(&id).await.unwrap().unwrap();
            assert_eq!(now.name.as_deref(), Some("second"), "{url}");
            assert!(
                store.list(Some("leases")).next().await.is_none(),
                "{url}: lock left behind"
            );
        }
    }
}
