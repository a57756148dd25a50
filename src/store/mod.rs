//! The object layout, as a thin layer over any [`object_store`] backend.
//!
//! The layout is the original ProgImage filebase, so an existing one is served as is:
//!
//! ```text
//! <h0>/<h1>/<id>                    the original bytes, exactly as uploaded
//! <h0>/<h1>/<id>.meta               the JSON sidecar (see [`Sidecar`])
//! <h0>/<h1>/<id>.<transform key>    a cached transform (see `engine::TransformSpec::key`)
//! ```
//!
//! `h0` and `h1` are the first two hex digits of the id, which spreads objects over
//! 256 directories on a filesystem and 256 prefixes in S3.
//!
//! Beside the shards, `leases/` holds short-lived leases on transforms being computed
//! (see [`Lease`]).
//!
//! Every write here is a create-if-absent put. The backends stage the bytes and publish
//! them in one step (a temp file then a link on the filesystem, one PUT on S3), so a
//! reader never sees a half-written object and two writers never clobber each other.
//! Since a blob and its derived objects are pure functions of the id, "already exists"
//! is success. Originals and sidecars are also written durably (see
//! [`Store::is_durable`]).

mod backend;
mod direct;
mod lease;
mod sidecar;

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, WriteMultipart,
};

use crate::buffers::BufferPool;
use crate::config::S3Settings;
use crate::error::{Error, Result};

pub use lease::{Lease, LEASES};
pub use sidecar::{Sidecar, StoredSidecar};

/// The id of an image: the lowercase hex SHA-1 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(String);

impl ImageId {
    /// Accepts 40 hex digits in either case; the id is always kept lowercase.
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(text.to_ascii_lowercase()))
        } else {
            Err(Error::bad_request(
                "invalid_image_id",
                format!("'{text}' is not an image id: expected 40 hex digits (a SHA-1)"),
            ))
        }
    }

    /// The id of some bytes already hashed with SHA-1.
    pub fn from_digest(digest: &[u8]) -> Self {
        use std::fmt::Write;
        let hex = digest.iter().fold(String::with_capacity(40), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a create-if-absent put wrote the object or found it already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    AlreadyThere,
}

/// An object being read: its total size, the byte range being sent, and the bytes.
pub struct ObjectStream {
    pub total_size: u64,
    pub range: Range<u64>,
    pub body: BoxStream<'static, Result<Bytes>>,
}

impl ObjectStream {
    /// The whole (ranged) body in one buffer.
    pub async fn collect(mut self) -> Result<Bytes> {
        let mut buffer = BytesMut::with_capacity((self.range.end - self.range.start) as usize);
        while let Some(chunk) = self.body.next().await {
            buffer.extend_from_slice(&chunk?);
        }
        Ok(buffer.freeze())
    }
}

/// One object found by [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The object's key, e.g. `a/b/ab12...` or `a/b/ab12....meta`.
    pub key: String,
    pub size: u64,
}

/// A stored object opened by [`Store::read_head`].
pub enum Opened {
    /// All of its bytes.
    Whole(Bytes),
    /// A directory store's file, its head read and the rest not yet.
    File(FileRead),
}

/// A file opened by [`Store::read_head`], read as far as its head.
pub struct FileRead {
    head: Vec<u8>,
    /// Positioned just past the head.
    file: std::fs::File,
    rest: u64,
    pool: Arc<BufferPool>,
    path: Path,
}

impl Opened {
    /// The bytes read so far: all of them, or the head asked for.
    pub fn head(&self) -> &[u8] {
        match self {
            Opened::Whole(bytes) => bytes,
            Opened::File(file) => &file.head,
        }
    }

    /// The length of the whole object.
    pub fn length(&self) -> u64 {
        match self {
            Opened::Whole(bytes) => bytes.len() as u64,
            Opened::File(file) => file.head.len() as u64 + file.rest,
        }
    }

    /// All of the bytes, reading the rest of a file into a buffer from its pool: a
    /// blocking read, for a worker or the blocking pool.
    pub fn read(self) -> Result<Bytes> {
        let FileRead {
            head,
            file,
            rest,
            pool,
            path,
        } = match self {
            Opened::Whole(bytes) => return Ok(bytes),
            Opened::File(file) => file,
        };
        read_into_pool(&pool, &head, file, rest)
            .map_err(|err| Error::store_failed(format_args!("reading {path}: {err}")))
    }
}

/// `head`, then the next `rest` bytes of `file`, in a buffer from `pool`.
fn read_into_pool(
    pool: &Arc<BufferPool>,
    head: &[u8],
    file: impl Read,
    rest: u64,
) -> std::io::Result<Bytes> {
    let length = head.len() as u64 + rest;
    let mut buffer = pool.take(usize::try_from(length).unwrap_or(usize::MAX));
    buffer.extend_from_slice(head);
    if let Err(err) = file.take(rest).read_to_end(&mut buffer) {
        pool.give(buffer);
        return Err(err);
    }
    Ok(pool.freeze(buffer))
}

/// The image store: the object layout over one backend.
#[derive(Debug, Clone)]
pub struct Store {
    objects: Arc<dyn ObjectStore>,
    /// For originals and sidecars (see [`Store::is_durable`]).
    durable: Arc<dyn ObjectStore>,
    multipart_threshold: u64,
    multipart_part: usize,
    held_leases: Arc<lease::HeldLeases>,
}

impl Store {
    /// Opens a store from its URL: a plain path or `file:///abs/path` (created if
    /// missing), `s3://bucket/optional/prefix` (reached as `s3` says), or `memory://`.
    pub fn open(url: &str, s3: &S3Settings) -> Result<Self> {
        let backend = backend::Backend::open(url, s3)?;
        Ok(Self {
            objects: backend.objects,
            durable: backend.durable,
            multipart_threshold: backend.multipart_threshold,
            multipart_part: backend.multipart_part,
            held_leases: Arc::default(),
        })
    }

    /// `<h0>/<h1>/<id>`: the original bytes.
    pub fn blob_path(id: &ImageId) -> Path {
        Path::from(format!("{}/{}", Self::shard(id), id))
    }

    /// `<h0>/<h1>/<id>.meta`: the JSON sidecar.
    pub fn sidecar_path(id: &ImageId) -> Path {
        Path::from(format!("{}/{}.meta", Self::shard(id), id))
    }

    /// `<h0>/<h1>/<id>.<key>`: a cached transform.
    pub fn derived_path(id: &ImageId, key: &str) -> Path {
        Path::from(format!("{}/{}.{}", Self::shard(id), id, key))
    }

    fn shard(id: &ImageId) -> String {
        let s = id.as_str();
        format!("{}/{}", &s[0..1], &s[1..2])
    }

    /// Writes `bytes` at `path` unless something is already there.
    ///
    /// Objects above the multipart threshold go up in parts, which S3 cannot make
    /// conditional; they are checked for first instead. Keys are derived from content
    /// (the id, the transform key), so two writers racing on one key write the same
    /// bytes and the last complete upload changes nothing.
    pub async fn put_if_absent(&self, path: &Path, bytes: Bytes) -> Result<Put> {
        if bytes.len() as u64 > self.multipart_threshold {
            if self.size(path).await?.is_some() {
                return Ok(Put::AlreadyThere);
            }
            return self.put_in_parts(path, bytes).await.map(|()| Put::Created);
        }
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let payload: PutPayload = slices(&bytes, WRITE_SLICE).collect();
        match self.writer(path).put_opts(path, payload, options).await {
            Ok(_) => Ok(Put::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Put::AlreadyThere),
            Err(err) => Err(err.into()),
        }
    }

    /// A multipart upload of slices of `bytes` (no copies); nothing is visible at
    /// `path` until the last part is in, and a failed upload is aborted.
    async fn put_in_parts(&self, path: &Path, bytes: Bytes) -> Result<()> {
        let upload = self.writer(path).put_multipart(path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.multipart_part);
        for part in slices(&bytes, self.multipart_part) {
            writer.put(part);
            if let Err(err) = writer.wait_for_capacity(4).await {
                let _ = writer.abort().await;
                return Err(err.into());
            }
        }
        writer.finish().await?;
        Ok(())
    }

    /// Whether the object at `path` is written durably: originals (`<h0>/<h1>/<id>`)
    /// and sidecars (`<id>.meta`) are the store's truth, and an upload acknowledged
    /// with 201 must survive a power cut. Transforms can be computed again and leases
    /// expire, so they skip the syncs (on the filesystem backend a sync of the file
    /// and of its directory, milliseconds on a disk).
    pub fn is_durable(path: &Path) -> bool {
        let key = path.as_ref();
        let name = path.filename().unwrap_or_default();
        let is_lease = key
            .strip_prefix(LEASES)
            .is_some_and(|rest| rest.starts_with('/'));
        !is_lease && (!name.contains('.') || name.ends_with(".meta"))
    }

    /// The backend handle that writes `path` (see [`Store::is_durable`]).
    fn writer(&self, path: &Path) -> &Arc<dyn ObjectStore> {
        match Self::is_durable(path) {
            true => &self.durable,
            false => &self.objects,
        }
    }

    /// Every object under `prefix` (everything when `None`), in no particular order.
    pub fn list(&self, prefix: Option<&str>) -> BoxStream<'static, Result<Listed>> {
        let prefix = prefix.map(Path::from);
        self.objects
            .list(prefix.as_ref())
            .map_ok(|meta| Listed {
                key: meta.location.to_string(),
                size: meta.size,
            })
            .map_err(Error::from)
            .boxed()
    }

    /// Up to `limit` image ids greater than `after`, in id order. The shards are walked
    /// in order from the cursor's own, so a page costs one listing per shard it spans,
    /// however large the store, and a cursor stays valid while images are added.
    pub async fn ids_after(&self, after: Option<&ImageId>, limit: usize) -> Result<Vec<ImageId>> {
        let first_shard = after.map_or(0, |id| {
            usize::from_str_radix(&id.as_str()[..2], 16).unwrap_or(0)
        });
        let mut ids = Vec::new();
        for shard in first_shard..256 {
            let prefix = format!("{:x}/{:x}", shard >> 4, shard & 15);
            let mut found: Vec<ImageId> = self
                .list(Some(&prefix))
                .try_filter_map(|listed| async move {
                    let name = listed.key.rsplit('/').next().unwrap_or("");
                    Ok(ImageId::parse(name).ok().filter(|id| id.as_str() == name))
                })
                .try_collect()
                .await?;
            found.sort();
            found.retain(|id| after.is_none_or(|after| id > after));
            ids.extend(found);
            if ids.len() >= limit {
                ids.truncate(limit);
                break;
            }
        }
        Ok(ids)
    }

    /// Every object of `id` but its blob: the sidecar and the cached transforms.
    pub async fn siblings(&self, id: &ImageId) -> Result<Vec<Path>> {
        let own = format!("{}.", Self::blob_path(id));
        self.list(Some(&Self::shard(id)))
            .try_filter_map(|listed| {
                let path = listed.key.starts_with(&own).then(|| Path::from(listed.key));
                async move { Ok(path) }
            })
            .try_collect()
            .await
    }

    /// Removes the object at `path`; removing nothing is not an error.
    pub async fn delete(&self, path: &Path) -> Result<()> {
        match self.objects.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Succeeds when the backend answers a request: what readiness means.
    pub async fn check(&self) -> Result<()> {
        self.size(&Path::from("progimage-readiness-probe"))
            .await
            .map(|_| ())
    }

    /// The size of the object at `path`, or `None` if there is none.
    pub async fn size(&self, path: &Path) -> Result<Option<u64>> {
        match self.objects.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// The whole object at `path`, or `None` if there is none.
    pub async fn read(&self, path: &Path) -> Result<Option<Bytes>> {
        match self.objects.get(path).await {
            Ok(result) => Ok(Some(result.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Like [`Store::read`], but a file of a directory store is read into a buffer from
    /// `pool`, which gets it back when the `Bytes` is dropped. A fresh buffer of
    /// megabytes is mapped and zeroed by the kernel page by page before the copy into
    /// it: for the 10 MB camera photo, 4.5% of an uncached thumbnail's CPU.
    pub async fn read_pooled(&self, path: &Path, pool: &Arc<BufferPool>) -> Result<Option<Bytes>> {
        // With no bound on the head, the whole object is read at once: `read` only
        // hands it over.
        let opened = self.read_head(path, u64::MAX, pool).await?;
        opened.map(Opened::read).transpose()
    }

    /// The object at `path` for work that needs its first `head` bytes now and the rest
    /// later, or `None` if there is none. A directory store's file longer than `head`
    /// is opened and its head read; the rest is read by [`Opened::read`], on the thread
    /// that needs it, into a buffer from `pool`. Other backends' objects, and shorter
    /// files, are read whole at once (files into a buffer from `pool`).
    pub async fn read_head(
        &self,
        path: &Path,
        head: u64,
        pool: &Arc<BufferPool>,
    ) -> Result<Option<Opened>> {
        let result = match self.objects.get(path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let range = result.range.clone();
        let GetResultPayload::File(mut file, _) = result.payload else {
            return Ok(Some(Opened::Whole(result.bytes().await?)));
        };
        let (pool, file_path) = (Arc::clone(pool), path.clone());
        let read = tokio::task::spawn_blocking(move || {
            file.seek(SeekFrom::Start(range.start))?;
            let length = range.end - range.start;
            let opened = if length <= head {
                Opened::Whole(read_into_pool(&pool, &[], &mut file, length)?)
            } else {
                let mut head_bytes = Vec::with_capacity(head as usize);
                (&mut file).take(head).read_to_end(&mut head_bytes)?;
                let rest = length - head_bytes.len() as u64;
                Opened::File(FileRead {
                    head: head_bytes,
                    file,
                    rest,
                    pool,
                    path: file_path,
                })
            };
            Ok::<_, std::io::Error>(opened)
        });
        let opened = read
            .await
            .map_err(|err| Error::internal(format!("a store read failed: {err}")))?
            .map_err(|err| Error::store_failed(format_args!("reading {path}: {err}")))?;
        Ok(Some(opened))
    }

    /// Streams the object at `path`, or just `range` of it, or `None` if there is none.
    /// The caller resolves the range against the size first (see [`Store::size`]).
    pub async fn stream(
        &self,
        path: &Path,
        range: Option<Range<u64>>,
    ) -> Result<Option<ObjectStream>> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        match self.objects.get_opts(path, options).await {
            Ok(result) => Ok(Some(ObjectStream {
                total_size: result.meta.size,
                range: result.range.clone(),
                body: result
                    .into_stream()
                    .map(|chunk| chunk.map_err(Error::from))
                    .boxed(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }
}

/// The most a single put hands the filesystem in one `write`. A larger write makes
/// the kernel build the file from large page-cache folios, which on a virtual machine
/// that returns free memory to its host come from memory the host has taken back:
/// writing a 10 MB upload in one call cost 2.5 ms of CPU per MB here, in 256 KiB
/// writes 0.2 (DECISIONS, "Uploads written in slices"). Object stores concatenate the
/// slices, so this only changes how the bytes are handed over; a directory store
/// writing an original around the page cache takes them in one vectored write (see
/// `direct`), where no folios are built.
const WRITE_SLICE: usize = 256 * 1024;

/// `bytes` as consecutive slices of at most `size` bytes (no copies).
fn slices(bytes: &Bytes, size: usize) -> impl Iterator<Item = Bytes> + '_ {
    (0..bytes.len())
        .step_by(size)
        .map(move |start| bytes.slice(start..bytes.len().min(start + size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_progimage_filebase() {
        let id = ImageId::parse("AB12000000000000000000000000000000000000").unwrap();
        assert_eq!(Store::blob_path(&id).as_ref(), format!("a/b/{id}"));
        assert_eq!(Store::sidecar_path(&id).as_ref(), format!("a/b/{id}.meta"));
        assert_eq!(
            Store::derived_path(&id, "e2.thumbnail(w=1).png").as_ref(),
            format!("a/b/{id}.e2.thumbnail(w=1).png")
        );
    }

    #[test]
    fn ids_must_be_sha1_hex() {
        assert!(ImageId::parse("../../etc/passwd").is_err());
        assert!(ImageId::parse(&"g".repeat(40)).is_err());
        assert!(ImageId::parse(&"a".repeat(39)).is_err());
    }

    #[tokio::test]
    async fn opens_paths_file_urls_s3_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = Path::from("x");
        let plain = dir.path().join("plain/nested");
        let url = dir.path().join("url/nested");
        for (location, url) in [
            (&plain, plain.to_str().unwrap().to_string()),
            (&url, format!("file://{}", url.display())),
        ] {
            let store = Store::open(&url, &S3Settings::default()).unwrap();
            store.put_if_absent(&path, "bytes".into()).await.unwrap();
            assert_eq!(
                std::fs::read(location.join("x")).unwrap(),
                b"bytes",
                "{url}"
            );
        }
        let defaults = S3Settings::default();
        assert!(Store::open("memory://", &defaults).is_ok());
        assert!(Store::open("s3://bucket/some/prefix", &defaults).is_ok());
        assert_eq!(
            Store::open("s3:///prefix", &defaults).unwrap_err().code,
            "store_unsupported"
        );
        assert_eq!(
            Store::open("ftp://host/x", &defaults).unwrap_err().code,
            "store_unsupported"
        );
    }

    #[tokio::test]
    async fn put_if_absent_never_overwrites() {
        let store = Store::open("memory://", &S3Settings::default()).unwrap();
        let path = Path::from("a/b/c");
        assert_eq!(
            store.put_if_absent(&path, "one".into()).await.unwrap(),
            Put::Created
        );
        assert_eq!(
            store.put_if_absent(&path, "two".into()).await.unwrap(),
            Put::AlreadyThere
        );
        assert_eq!(store.read(&path).await.unwrap().unwrap(), "one");
    }

    #[tokio::test]
    async fn large_objects_go_up_in_parts() {
        let mut store = Store::open("memory://", &S3Settings::default()).unwrap();
        store.multipart_threshold = 10;
        store.multipart_part = 4;
        let path = Path::from("a/b/big");
        let bytes = Bytes::from_static(b"0123456789abcdefghijklmnopq");
        assert_eq!(
            store.put_if_absent(&path, bytes.clone()).await.unwrap(),
            Put::Created
        );
        assert_eq!(store.read(&path).await.unwrap().unwrap(), bytes);
        assert_eq!(
            store
                .put_if_absent(&path, "other".repeat(5).into())
                .await
                .unwrap(),
            Put::AlreadyThere
        );
        assert_eq!(store.read(&path).await.unwrap().unwrap(), bytes);
    }

    #[tokio::test]
    async fn files_are_written_in_slices_and_arrive_whole() {
        let bytes: Bytes = (0..4 * WRITE_SLICE + 3).map(|i| (i % 251) as u8).collect();
        let lengths: Vec<usize> = slices(&bytes, WRITE_SLICE).map(|s| s.len()).collect();
        assert_eq!(
            lengths,
            [WRITE_SLICE, WRITE_SLICE, WRITE_SLICE, WRITE_SLICE, 3]
        );
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), &S3Settings::default()).unwrap();
        let path = Path::from("a/b/whole");
        assert_eq!(
            store.put_if_absent(&path, bytes.clone()).await.unwrap(),
            Put::Created
        );
        assert_eq!(std::fs::read(dir.path().join("a/b/whole")).unwrap(), bytes);
    }

    #[tokio::test]
    async fn pooled_reads_return_their_buffer_on_every_backend() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Bytes = (0..3 << 20).map(|i| (i % 253) as u8).collect();
        let path = Path::from("a/b/pooled");
        for url in [dir.path().to_str().unwrap(), "memory://"] {
            let store = Store::open(url, &S3Settings::default()).unwrap();
            store.put_if_absent(&path, bytes.clone()).await.unwrap();
            let pool = Arc::new(BufferPool::new(16 << 20));
            let read = store.read_pooled(&path, &pool).await.unwrap().unwrap();
            assert_eq!(read, bytes, "{url}");
            drop(read);
            // A directory's file is read into the pool's buffer (a new one is at least
            // the huge-page threshold long), which comes back.
            let kept = match url {
                "memory://" => 0,
                _ => bytes.len().max(crate::hugepages::THRESHOLD),
            };
            assert_eq!(pool.idle_bytes(), kept, "{url}");
            let missing = Path::from("a/b/missing");
            assert!(store.read_pooled(&missing, &pool).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn a_head_read_leaves_the_rest_of_a_file_for_later() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Bytes = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        let path = Path::from("a/b/headed");
        let store = Store::open(dir.path().to_str().unwrap(), &S3Settings::default()).unwrap();
        store.put_if_absent(&path, bytes.clone()).await.unwrap();
        let pool = Arc::new(BufferPool::new(16 << 20));
        pool.give(Vec::with_capacity(4 << 20));
        let opened = store.read_head(&path, 1000, &pool).await.unwrap().unwrap();
        assert_eq!(opened.head(), &bytes[..1000]);
        assert_eq!(opened.length(), bytes.len() as u64);
        assert_eq!(pool.idle_bytes(), 4 << 20, "the head took a pooled buffer");
        let read = opened.read().unwrap();
        assert_eq!(read, bytes);
        assert_eq!(
            pool.idle_bytes(),
            0,
            "the rest was not read into the pool's buffer"
        );
        drop(read);
        assert_eq!(pool.idle_bytes(), 4 << 20);
        // A file no longer than the head, and any other backend's object, come whole.
        let whole = store
            .read_head(&path, 3 << 20, &pool)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(&whole, Opened::Whole(read) if read == &bytes));
        let memory = Store::open("memory://", &S3Settings::default()).unwrap();
        memory.put_if_absent(&path, bytes.clone()).await.unwrap();
        let whole = memory.read_head(&path, 1000, &pool).await.unwrap().unwrap();
        assert!(matches!(&whole, Opened::Whole(read) if read == &bytes));
    }

    #[test]
    fn originals_and_sidecars_are_durable_transforms_and_leases_are_not() {
        let id = ImageId::from_digest(&[0xab; 20]);
        let derived = Store::derived_path(&id, "e3.thumbnail-w300.jpg");
        assert!(Store::is_durable(&Store::blob_path(&id)));
        assert!(Store::is_durable(&Store::sidecar_path(&id)));
        assert!(!Store::is_durable(&derived));
        assert!(!Store::is_durable(&Store::lease_path(&derived)));
        // The lock around a sidecar's compare-and-swap is a lease too.
        assert!(!Store::is_durable(&Store::lease_path(
            &Store::sidecar_path(&id)
        )));
    }
}
