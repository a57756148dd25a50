//! The image service: the one place that knows both the store and the engine.
//!
//! - Upload: the bytes arrive through an [`IncomingImage`], which hashes them as they
//!   stream in and enforces the size limit; the header is probed (format, size,
//!   completeness); the blob is written create-if-absent, then its sidecar. The blob
//!   comes first so that a sidecar never points at nothing.
//! - Fetch: originals and cached transforms stream straight from the store.
//! - Transform: the cache key is looked up first; on a miss, concurrent requests for
//!   the same key share one computation (single-flight), which runs on one of a
//!   fixed set of worker threads (`workers`) so CPU work can never starve cache hits.
//!   Across instances sharing the store, a lease object picks the one that computes;
//!   the others poll the store for its result.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use sha1::{Digest, Sha1};
use tokio::sync::OnceCell;

use crate::budget::{MemoryBudget, Reservation};
use crate::buffers::BufferPool;
use crate::config::Settings;
use crate::cores::CoreSlots;
use crate::engine::{Engine, Format, Presets, Probe, Rendered, TransformSpec};
use crate::error::{image_work_panicked, Error, ErrorKind, Result};
use crate::hot::{HotCache, Source};
use crate::metrics::{Load, Metrics};
use crate::store::{ImageId, Lease, ObjectStream, Opened, Put, Sidecar, Store, StoredSidecar};
use crate::workers::Workers;

/// Where a transform response came from, reported to clients in `X-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Read from the store: computed earlier.
    Hit,
    /// Computed by this request (and stored, unless `store_transforms` is off).
    Miss,
    /// Computed by a concurrent request for the same key, which this one waited for.
    Coalesced,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Coalesced => "COALESCED",
        }
    }

    /// The status an `X-Cache` value names.
    pub fn parse(text: &str) -> Option<Self> {
        [CacheStatus::Hit, CacheStatus::Miss, CacheStatus::Coalesced]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// A byte range as a client asks for it, before the object's size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=first-last`, inclusive.
    FromTo(u64, u64),
    /// `bytes=first-`.
    From(u64),
    /// `bytes=-length`: the last `length` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The half-open range within an object of `size` bytes, or `None` when it lies
    /// entirely outside (416).
    pub fn resolve(self, size: u64) -> Option<Range<u64>> {
        let range = match self {
            ByteRange::FromTo(first, last) => first..last.saturating_add(1).min(size),
            ByteRange::From(first) => first..size,
            ByteRange::Suffix(length) => size.saturating_sub(length)..size,
        };
        (range.start < range.end).then_some(range)
    }
}

/// An object on its way to a client.
pub struct Fetched {
    pub content_type: String,
    /// Unquoted entity tag: the id for originals, `<id>.<key>` for transforms.
    pub etag: String,
    pub object: ObjectStream,
    /// `None` for originals and metadata, which are not transforms.
    pub cache: Option<CacheStatus>,
}

/// An upload received in full: its id, bytes and the form's optional fields.
#[derive(Debug)]
pub struct Upload {
    pub id: ImageId,
    pub bytes: Bytes,
    pub file_name: Option<String>,
    pub name: Option<String>,
    pub desc: Option<String>,
    /// The bytes' share of the memory budget, held until the upload is dropped.
    pub memory: Reservation,
}

/// Upload bytes as they stream in: hashed chunk by chunk and held once, up to a limit,
/// within the memory budget.
pub struct IncomingImage {
    hasher: Sha1,
    buffer: Vec<u8>,
    buffers: Arc<BufferPool>,
    limit: u64,
    budget: Arc<MemoryBudget>,
    memory: Reservation,
}

/// Idle upload buffers kept for reuse hold at most this fraction of the memory
/// budget (64 MiB of the default 256).
const IDLE_UPLOAD_BUFFERS_SHARE: u64 = 4;

/// How much of a stored original is read before its job waits for a worker: enough
/// for the header of every photo in the test corpus (a JPEG's frame header comes after
/// its EXIF, ICC and XMP segments: 62 KB in the furthest).
const SOURCE_HEAD: u64 = 256 * 1024;

/// How much of a stored original its format is sniffed from (see `Format::sniff`: its
/// longest signature is 12 bytes).
const MAGIC_BYTES: u64 = 64;

/// How much a body of unknown length reserves at a time.
const GROWTH: u64 = 1024 * 1024;

impl IncomingImage {
    /// `expected` is the declared length, if any: refused over the limit, else
    /// reserved from the budget (waiting for it) and used to size the buffer.
    pub async fn new(
        limit: u64,
        expected: Option<u64>,
        budget: Arc<MemoryBudget>,
        buffers: Arc<BufferPool>,
    ) -> Result<Self> {
        if let Some(length) = expected.filter(|&length| length > limit) {
            return Err(upload_too_large(limit, Some(length)));
        }
        let memory = match expected {
            Some(length) => budget.reserve(length).await?,
            None => Reservation::none(),
        };
        let capacity = expected.unwrap_or(0).min(limit) as usize;
        Ok(Self {
            hasher: Sha1::new(),
            buffer: buffers.take(capacity),
            buffers,
            limit,
            budget,
            memory,
        })
    }

    /// Adds a chunk; fails with 413 as soon as the total passes the limit, and with
    /// 429 when a body longer than declared (or of unknown length) outgrows its
    /// reservation and the budget has no more.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        let length = (self.buffer.len() + chunk.len()) as u64;
        if length > self.limit {
            return Err(upload_too_large(self.limit, None));
        }
        if length > self.memory.bytes() {
            let target = length.max(self.memory.bytes() + GROWTH);
            self.budget.grow_to(&mut self.memory, target)?;
        }
        self.hasher.update(chunk);
        self.buffer.extend_from_slice(chunk);
        Ok(())
    }

    /// The most bytes this upload may hold.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// The id (SHA-1 of everything pushed), the bytes and their reservation.
    pub fn finish(mut self) -> (ImageId, Bytes, Reservation) {
        let buffer = std::mem::take(&mut self.buffer);
        (
            ImageId::from_digest(&self.hasher.finalize_reset()),
            self.buffers.freeze(buffer),
            std::mem::replace(&mut self.memory, Reservation::none()),
        )
    }
}

impl Drop for IncomingImage {
    /// An upload refused halfway gives its buffer back too.
    fn drop(&mut self) {
        self.buffers.give(std::mem::take(&mut self.buffer));
    }
}

fn upload_too_large(limit: u64, length: Option<u64>) -> Error {
    let size = length.map_or_else(
        || "the body".to_string(),
        |l| format!("the body ({l} bytes)"),
    );
    Error::too_large(
        "max_upload_bytes",
        format!("{size} is over max_upload_bytes ({limit} bytes)"),
    )
}

type Flight = Arc<OnceCell<Result<(Bytes, CacheStatus)>>>;

/// A change to an image's metadata (`PATCH .../meta/`): each field present replaces
/// the stored one; `Some(None)` clears `name` or `desc`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MetaChange {
    pub name: Option<Option<String>>,
    pub desc: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
}

impl MetaChange {
    fn apply(&self, mut sidecar: Sidecar) -> Sidecar {
        if let Some(name) = &self.name {
            sidecar.name = name.clone();
        }
        if let Some(desc) = &self.desc {
            sidecar.desc = desc.clone();
        }
        if let Some(tags) = &self.tags {
            sidecar.tags = tags.clone();
        }
        sidecar
    }
}

/// An `If-Match` precondition on a metadata change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: any current version.
    Any,
    /// One of these entity tags, unquoted.
    OneOf(Vec<String>),
}

impl IfMatch {
    fn allows(&self, etag: &str) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::OneOf(tags) => tags.iter().any(|tag| tag == etag),
        }
    }
}

/// A page of a listing and the cursor for the next one.
pub struct Page {
    pub images: Vec<(ImageId, Sidecar)>,
    pub next_cursor: Option<ImageId>,
}

/// How many images a tag-filtered listing reads at most per request; past it the page
/// ends early with a cursor, so one request's cost stays bounded on a large store.
pub const MAX_SCAN: usize = 5000;

/// The service. Cheap to share behind an `Arc`.
pub struct Service {
    store: Store,
    engine: Engine,
    workers: Workers,
    in_flight: Mutex<HashMap<Path, Flight>>,
    lease_ttl: Duration,
    lease_after: Duration,
    /// `store_transforms`: whether results are written to the store.
    store_transforms: bool,
    max_upload_bytes: u64,
    memory: Arc<MemoryBudget>,
    upload_buffers: Arc<BufferPool>,
    metrics: Arc<Metrics>,
    hot: HotCache,
    /// The cores transform jobs are pinned to while they run, if any: see
    /// [`Service::pin_jobs_to`].
    cores: Option<Arc<CoreSlots>>,
}

impl Service {
    /// Fails when the settings' presets do not parse.
    pub fn new(settings: &Settings, store: Store) -> Result<Self> {
        let presets = Presets::new(&settings.presets)?;
        let workers = Workers::new(
            settings.effective_workers(),
            settings.limits.max_queued_transforms,
        )
        .map_err(|err| Error::internal(format!("could not start the transform workers: {err}")))?;
        Ok(Self {
            store,
            engine: Engine::new(settings.limits.clone(), presets),
            workers,
            in_flight: Mutex::new(HashMap::new()),
            lease_ttl: Duration::from_secs(settings.transform_lease_secs),
            lease_after: Duration::from_millis(settings.transform_lease_after_ms),
            store_transforms: settings.store_transforms,
            max_upload_bytes: settings.limits.max_upload_bytes,
            memory: Arc::new(MemoryBudget::new(
                settings.limits.memory_budget_bytes,
                settings.limits.max_queued_transforms,
            )),
            upload_buffers: Arc::new(BufferPool::new(
                (settings.limits.memory_budget_bytes / IDLE_UPLOAD_BUFFERS_SHARE) as usize,
            )),
            metrics: Arc::new(Metrics::default()),
            hot: HotCache::new(
                settings.hot_cache_bytes,
                Duration::from_secs(settings.hot_cache_source_secs),
            ),
            cores: None,
        })
    }

    /// Runs each transform job pinned to a core no other job has, while there is one
    /// (see [`crate::cores`]): jobs left to the scheduler often shared a core while
    /// the other idled.
    pub fn pin_jobs_to(mut self, cores: CoreSlots) -> Self {
        self.cores = Some(Arc::new(cores));
        self
    }

    /// The metrics in their text form, with the gauges read now.
    pub fn render_metrics(&self) -> String {
        self.metrics.load(&Load {
            hot_cache_bytes: self.hot.held_bytes(),
            memory_reserved_bytes: self.memory.reserved(),
            memory_waiting: self.memory.waiting() as u64,
            transforms_running: self.workers.running() as u64,
            transforms_waiting: self.workers.waiting() as u64,
        });
        self.metrics.render()
    }

    /// The metrics this service and its HTTP face record.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Parses a transform request (a pipeline path and its query) for this service.
    pub fn transform_spec(
        &self,
        path: &str,
        query: &[(String, String)],
        accept: Option<&str>,
    ) -> Result<TransformSpec> {
        self.engine.spec(path, query, accept)
    }

    /// What `GET /transforms/` lists.
    pub fn catalogue(&self) -> serde_json::Value {
        self.engine.catalogue()
    }

    /// The most bytes one uploaded image may have.
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_bytes
    }

    /// Deletes the transform leases of work still running when the server stops (see
    /// [`Store::release_held_leases`]); returns how many.
    pub async fn release_held_leases(&self) -> usize {
        self.store.release_held_leases().await
    }

    /// A buffer for one upload's bytes, refusing a declared length over the limit and
    /// reserving it from the memory budget.
    pub async fn incoming(&self, declared_length: Option<u64>) -> Result<IncomingImage> {
        IncomingImage::new(
            self.max_upload_bytes,
            declared_length,
            Arc::clone(&self.memory),
            Arc::clone(&self.upload_buffers),
        )
        .await
    }

    /// Stores an upload. Returns its sidecar and whether the blob is new (`false`
    /// when the same bytes were stored before: nothing is written twice).
    pub async fn upload(&self, upload: Upload) -> Result<(Sidecar, bool)> {
        let (probe, upright) = self.describe(upload.bytes.clone()).await?;
        let blob = Store::blob_path(&upload.id);
        let created = match self.store.size(&blob).await? {
            Some(_) => false,
            None => {
                self.store
                    .put_if_absent(&blob, upload.bytes.clone())
                    .await?
                    == Put::Created
            }
        };
        let sidecar = Sidecar {
            file_name: upload
                .file_name
                .unwrap_or_else(|| format!("{}.{}", upload.id, probe.format)),
            content_type: Some(probe.format.content_type().to_string()),
            format: Some(probe.format.name().to_string()),
            width: Some(upright.0),
            height: Some(upright.1),
            bytes: Some(upload.bytes.len() as u64),
            name: upload.name,
            desc: upload.desc,
            tags: Vec::new(),
            created: Some(chrono::Utc::now()),
            other: Default::default(),
        };
        match self.store.write_sidecar(&upload.id, &sidecar).await? {
            Put::Created => Ok((sidecar, created)),
            // The same bytes were uploaded before: answer with what was stored then.
            Put::AlreadyThere => Ok((self.sidecar(&upload.id).await?, created)),
        }
    }

    /// The sidecar of an image; for a blob without one (a bare filebase), what the
    /// blob's header says.
    pub async fn sidecar(&self, id: &ImageId) -> Result<Sidecar> {
        match self.store.read_sidecar(id).await? {
            Some(sidecar) => Ok(sidecar),
            None => self.sidecar_from_blob(id).await,
        }
    }

    /// The sidecar and its entity tag (unquoted), for `GET .../meta/`.
    pub async fn meta(&self, id: &ImageId) -> Result<(Sidecar, String)> {
        match self.store.read_stored_sidecar(id).await? {
            Some(stored) => Ok((stored.sidecar, stored.etag)),
            None => {
                let sidecar = self.sidecar_from_blob(id).await?;
                let etag = sidecar.etag();
                Ok((sidecar, etag))
            }
        }
    }

    /// Applies `change` to the sidecar of `id` if `if_match` allows its current
    /// version (412 otherwise), and returns the new sidecar and entity tag. The write
    /// is a compare-and-swap on the version read, so concurrent changes are never
    /// lost: without `If-Match` a change that lost the race is applied again to the
    /// newer version; with it, the newer version no longer matches.
    pub async fn update_meta(
        &self,
        id: &ImageId,
        change: &MetaChange,
        if_match: Option<&IfMatch>,
    ) -> Result<(Sidecar, String)> {
        const ATTEMPTS: usize = 16;
        for _ in 0..ATTEMPTS {
            let stored = self.store.read_stored_sidecar(id).await?;
            let (current, etag) = match &stored {
                Some(StoredSidecar { sidecar, etag, .. }) => (sidecar.clone(), etag.clone()),
                None => {
                    let sidecar = self.sidecar_from_blob(id).await?;
                    let etag = sidecar.etag();
                    (sidecar, etag)
                }
            };
            if if_match.is_some_and(|expected| !expected.allows(&etag)) {
                return Err(Error::new(
                    ErrorKind::PreconditionFailed,
                    "precondition_failed",
                    format!("the metadata of {id} has changed: its ETag is now \"{etag}\""),
                ));
            }
            let updated = change.apply(current);
            if self
                .store
                .replace_sidecar(id, stored.as_ref(), &updated)
                .await?
            {
                let etag = updated.etag();
                return Ok((updated, etag));
            }
        }
        Err(Error::unavailable(format!(
            "the metadata of {id} changed {ATTEMPTS} times while this change was applied"
        )))
    }

    /// Probes an image on the blocking pool, with the size it shows (sidecars record
    /// that one).
    async fn describe(&self, bytes: Bytes) -> Result<(Probe, (u32, u32))> {
        let engine = self.engine.clone();
        run_blocking(move || {
            let probe = engine.probe(&bytes)?;
            Ok((probe, engine.upright_size(&probe, &bytes)))
        })
        .await
    }

    /// What a blob without a sidecar is described by: its header, probed on the
    /// blocking pool. 404 when there is no blob either.
    async fn sidecar_from_blob(&self, id: &ImageId) -> Result<Sidecar> {
        let bytes = self.read_blob(id).await?;
        let size = bytes.len() as u64;
        let (probe, upright) = self.describe(bytes).await?;
        Ok(Sidecar {
            file_name: format!("{id}.{}", probe.format),
            content_type: Some(probe.format.content_type().to_string()),
            format: Some(probe.format.name().to_string()),
            width: Some(upright.0),
            height: Some(upright.1),
            bytes: Some(size),
            ..Sidecar::default()
        })
    }

    /// Whether `err` says the bytes are not an image the engine reads.
    fn unreadable(err: &Error) -> bool {
        matches!(
            err.kind,
            ErrorKind::UnsupportedMediaType | ErrorKind::Undecodable | ErrorKind::TooLarge
        )
    }

    /// A page of stored images after `cursor`, each with its sidecar; with `tag`,
    /// only those tagged so. Sidecars are read 8 at a time. A tag filter scans: it
    /// reads every sidecar after the cursor until the page is full, at most
    /// [`MAX_SCAN`] per request.
    pub async fn list(
        &self,
        cursor: Option<&ImageId>,
        limit: usize,
        tag: Option<&str>,
    ) -> Result<Page> {
        let batch = if tag.is_some() { limit.max(100) } else { limit } + 1;
        let mut images = Vec::new();
        let mut after = cursor.cloned();
        let mut scanned = 0;
        loop {
            let ids = self.store.ids_after(after.as_ref(), batch).await?;
            let exhausted = ids.len() < batch;
            let sidecars: Vec<Option<(ImageId, Sidecar)>> = stream::iter(ids)
                .map(|id| async move {
                    match self.sidecar(&id).await {
                        Ok(sidecar) => Ok(Some((id, sidecar))),
                        // Deleted since the listing saw it.
                        Err(err) if err.kind == ErrorKind::NotFound => Ok(None),
                        // A bare blob the engine cannot read is still in the store,
                        // so it is listed, as no more than its name.
                        Err(err) if Self::unreadable(&err) => {
                            let file_name = id.to_string();
                            Ok(Some((
                                id,
                                Sidecar {
                                    file_name,
                                    ..Sidecar::default()
                                },
                            )))
                        }
                        Err(err) => Err(err),
                    }
                })
                .buffered(8)
                .try_collect()
                .await?;
            for (id, sidecar) in sidecars.into_iter().flatten() {
                scanned += 1;
                let wanted = tag.is_none_or(|tag| sidecar.tags.iter().any(|t| t == tag));
                if wanted && images.len() == limit {
                    // The page is full and another image follows it.
                    return Ok(page(images));
                }
                after = Some(id.clone());
                if wanted {
                    images.push((id, sidecar));
                }
            }
            if exhausted {
                return Ok(Page {
                    images,
                    next_cursor: None,
                });
            }
            if scanned >= MAX_SCAN {
                return Ok(Page {
                    images,
                    next_cursor: after,
                });
            }
        }
    }

    /// Deletes an image: its cached transforms, then its sidecar, then its blob, so an
    /// interrupted delete leaves a blob without a sidecar (still a valid image) and
    /// never a sidecar without its blob. A reader gets the whole image or a 404: blobs
    /// are never rewritten, and a read already streaming finishes. Transforms that
    /// concurrent requests store meanwhile are swept once more at the end.
    pub async fn delete(&self, id: &ImageId) -> Result<()> {
        self.hot.forget(id);
        let blob = Store::blob_path(id);
        let siblings = self.store.siblings(id).await?;
        if siblings.is_empty() && self.store.size(&blob).await?.is_none() {
            return Err(image_not_found(id));
        }
        let sidecar = Store::sidecar_path(id);
        for path in siblings.iter().filter(|path| **path != sidecar) {
            self.store.delete(path).await?;
        }
        self.store.delete(&sidecar).await?;
        self.store.delete(&blob).await?;
        for path in self.store.siblings(id).await? {
            self.store.delete(&path).await?;
        }
        Ok(())
    }

    /// The original bytes, or `range` of them.
    pub async fn original(&self, id: &ImageId, range: Option<ByteRange>) -> Result<Fetched> {
        let sidecar = self.store.read_sidecar(id).await?;
        let path = Store::blob_path(id);
        let object = self
            .stream(&path, range)
            .await?
            .ok_or_else(|| image_not_found(id))?;
        let content_type = match sidecar {
            Some(Sidecar {
                content_type: Some(content_type),
                ..
            }) => content_type,
            Some(sidecar) => mime_guess::from_path(&sidecar.file_name)
                .first_or_octet_stream()
                .to_string(),
            None => self.source(id).await?.format.content_type().to_string(),
        };
        Ok(Fetched {
            content_type,
            etag: id.to_string(),
            object,
            cache: None,
        })
    }

    /// A transform of a stored image: from the cache, or computed once and cached.
    pub async fn transform(
        &self,
        id: &ImageId,
        spec: &Arc<TransformSpec>,
        range: Option<ByteRange>,
    ) -> Result<Fetched> {
        let source = self.source(id).await?;
        let key = spec.key(source.format);
        let path = Store::derived_path(id, &key);
        let etag = format!("{id}.{key}");
        let content_type = crate::engine::content_type_of_key(&key);
        if let Some(bytes) = self.hot.result(&path) {
            return Ok(Fetched {
                content_type,
                etag,
                object: object_from_bytes(bytes, range)?,
                cache: Some(CacheStatus::Hit),
            });
        }
        let stored = match self.store_transforms {
            true => self.stream(&path, range).await?,
            false => None,
        };
        if let Some(object) = stored {
            let object = match range {
                None if self.hot.would_keep(object.total_size) => {
                    let bytes = object.collect().await?;
                    self.hot.remember_result(&path, &bytes);
                    object_from_bytes(bytes, None)?
                }
                _ => object,
            };
            return Ok(Fetched {
                content_type,
                etag,
                object,
                cache: Some(CacheStatus::Hit),
            });
        }
        let (bytes, cache) = self.compute_once(id, source, spec, &path).await?;
        self.hot.remember_result(&path, &bytes);
        Ok(Fetched {
            content_type,
            etag,
            object: object_from_bytes(bytes, range)?,
            cache: Some(cache),
        })
    }

    /// Runs a transform on an upload that is not stored, and stores nothing.
    pub async fn on_demand(&self, upload: Upload, spec: TransformSpec) -> Result<Rendered> {
        self.render(Opened::Whole(upload.bytes), Arc::new(spec), upload.memory)
            .await
    }

    /// Decodes, transforms and encodes on a worker, timing it for the metrics. The job
    /// holds its source and working memory (estimated from the header) from the budget:
    /// it waits for them when it holds nothing yet; when it already holds part (an
    /// upload's bytes), it takes the rest only if the budget has it now (else 429), since
    /// jobs waiting while holding could wait for each other forever. A job that reserved
    /// from its sidecar, before its header could be read, gives back what the header
    /// shows it will not need.
    ///
    /// A source read only as far as its head is read whole by the worker, just before
    /// decoding: jobs waiting for a worker hold only the first `SOURCE_HEAD` bytes of
    /// their source. At 16 connections on the camera photo, sixteen sources read ahead
    /// of the workers were sixteen fresh 10 MB buffers whenever load rose, and their
    /// page faults held the first second's requests about twice as long (DECISIONS,
    /// "Sources read by the worker").
    async fn render(
        &self,
        mut source: Opened,
        spec: Arc<TransformSpec>,
        mut memory: Reservation,
    ) -> Result<Rendered> {
        let mut working = self.engine.working_memory(source.head(), &spec);
        if working == 0 && matches!(source, Opened::File(_)) {
            // The header runs past the head (or does not parse): read it all now.
            source = Opened::Whole(run_blocking(move || source.read()).await?);
            working = self.engine.working_memory(source.head(), &spec);
        }
        let needed = working + source.length();
        if memory.bytes() == 0 {
            memory = self.memory.reserve(needed).await?;
        } else {
            self.memory.fit_to(&mut memory, needed)?;
        }
        let engine = self.engine.clone();
        let metrics = Arc::clone(&self.metrics);
        self.run_worker(move || {
            // Held by the job, not the request: a request dropped (its client gone)
            // leaves the job running on the pool, and its memory still in use.
            let _memory = memory;
            let source = source.read()?;
            let started = Instant::now();
            let rendered = engine.render(&source, &spec);
            metrics.transform(spec.label(), started.elapsed());
            rendered
        })
        .await
    }

    /// Coalesces concurrent computations of one derived object into one.
    async fn compute_once(
        &self,
        id: &ImageId,
        source: Source,
        spec: &Arc<TransformSpec>,
        path: &Path,
    ) -> Result<(Bytes, CacheStatus)> {
        let hold = FlightHold::join(&self.in_flight, path);
        let mut led = false;
        let result = hold
            .flight()
            .get_or_init(|| {
                led = true;
                self.compute(id, source, spec, path)
            })
            .await
            .clone();
        drop(hold);
        let (bytes, status) = result?;
        Ok((bytes, if led { status } else { CacheStatus::Coalesced }))
    }

    /// Computes and stores one derived object, unless another instance is computing it
    /// under a lease, in which case its result is awaited; with `store_transforms` off,
    /// only computes it (no lease: other instances store nothing to wait for). A
    /// computation takes the lease itself once it has run for `lease_after` (at once
    /// when that is zero), so that instances missing from then on wait for it; a
    /// quicker one never writes a lease.
    /// Checks the hot cache once more first: the previous flight for this key may have
    /// finished since our lookup missed (one whose result is too large for the hot
    /// cache is found by the store reads below, there for other instances anyway).
    async fn compute(
        &self,
        id: &ImageId,
        source: Source,
        spec: &Arc<TransformSpec>,
        path: &Path,
    ) -> Result<(Bytes, CacheStatus)> {
        if let Some(bytes) = self.hot.result(path) {
            return Ok((bytes, CacheStatus::Hit));
        }
        if !self.store_transforms {
            let bytes = self.render_stored(id, source, spec).await?;
            return Ok((bytes, CacheStatus::Miss));
        }
        let lease = Store::lease_path(path);
        if self.lease_after.is_zero() {
            return self
                .compute_under_lease(id, source, spec, path, &lease)
                .await;
        }
        while self.store.lease_expiry(&lease).await?.is_some() {
            if let Some(bytes) = self.await_other_instance(path, &lease).await? {
                return Ok((bytes, CacheStatus::Coalesced));
            }
        }
        let work = self.render_and_store(id, source, spec, path);
        tokio::pin!(work);
        if let Ok(result) = tokio::time::timeout(self.lease_after, &mut work).await {
            return result;
        }
        // Whoever else holds it by now started after our look and computes too; the
        // store keeps whichever result is written first, and the two are the same.
        let held = match self.store.try_lease(&lease, self.lease_ttl).await {
            Ok(Lease::Acquired(held)) => Some(held),
            Ok(Lease::HeldUntil(_) | Lease::Free) => None,
            Err(err) => {
                tracing::warn!(lease = %lease, error = %err, "could not take a lease; computing without");
                None
            }
        };
        if held.is_some() {
            self.metrics.lease_taken();
        }
        let result = work.await;
        if let Some(held) = held {
            held.release().await;
        }
        result
    }

    /// Takes the lease before computing (`transform_lease_after_ms = 0`): of the
    /// instances that miss at once, exactly one computes.
    async fn compute_under_lease(
        &self,
        id: &ImageId,
        source: Source,
        spec: &Arc<TransformSpec>,
        path: &Path,
        lease: &Path,
    ) -> Result<(Bytes, CacheStatus)> {
        let held = loop {
            match self.store.try_lease(lease, self.lease_ttl).await? {
                Lease::Acquired(held) => break held,
                Lease::HeldUntil(_) | Lease::Free => {
                    if let Some(bytes) = self.await_other_instance(path, lease).await? {
                        return Ok((bytes, CacheStatus::Coalesced));
                    }
                }
            }
        };
        self.metrics.lease_taken();
        let result = match self.store.read(path).await {
            // The holder before us finished between our last look and our lease.
            Ok(Some(bytes)) => Ok((bytes, CacheStatus::Coalesced)),
            Ok(None) => self.render_and_store(id, source, spec, path).await,
            Err(err) => Err(err),
        };
        held.release().await;
        result
    }

    /// Polls the store for the object another instance is computing. `None` when its
    /// lease is gone without a result (the holder failed) or has expired (it crashed):
    /// then the caller tries to take the lease itself.
    async fn await_other_instance(&self, path: &Path, lease: &Path) -> Result<Option<Bytes>> {
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(bytes) = self.store.read(path).await? {
                return Ok(Some(bytes));
            }
            match self.store.lease_expiry(lease).await? {
                Some(until) if until > chrono::Utc::now() => {}
                Some(_) => {
                    tracing::warn!(lease = %lease, "removing an expired lease");
                    self.store.delete(lease).await?;
                    return Ok(None);
                }
                // Released: the result is stored by now unless the holder failed.
                None => return self.store.read(path).await,
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    async fn render_and_store(
        &self,
        id: &ImageId,
        source: Source,
        spec: &Arc<TransformSpec>,
        path: &Path,
    ) -> Result<(Bytes, CacheStatus)> {
        let bytes = self.render_stored(id, source, spec).await?;
        match self.store.put_if_absent(path, bytes.clone()).await? {
            Put::Created => Ok((bytes, CacheStatus::Miss)),
            // Another writer got there first; serve exactly what it stored.
            Put::AlreadyThere => match self.store.read(path).await? {
                Some(stored) => Ok((stored, CacheStatus::Miss)),
                None => Ok((bytes, CacheStatus::Miss)),
            },
        }
    }

    /// Renders a transform of a stored original.
    async fn render_stored(
        &self,
        id: &ImageId,
        source: Source,
        spec: &Arc<TransformSpec>,
    ) -> Result<Bytes> {
        // Reserve before reading the source, from what the sidecar says, so that jobs
        // waiting for the budget hold neither their source nor their pixels.
        let memory = match source {
            Source {
                format,
                size: Some(size),
                bytes: Some(bytes),
            } => {
                let working = self.engine.estimated_memory(format, size, None, spec);
                self.memory.reserve(working + bytes).await?
            }
            _ => Reservation::none(),
        };
        let blob = self
            .store
            .read_head(&Store::blob_path(id), SOURCE_HEAD, &self.upload_buffers)
            .await?
            .ok_or_else(|| image_not_found(id))?;
        let rendered = self.render(blob, Arc::clone(spec), memory).await?;
        Ok(Bytes::from(rendered.bytes))
    }

    /// Whether the store answers within `timeout`: what `/readyz` reports.
    pub async fn ready(&self, timeout: Duration) -> Result<()> {
        tokio::time::timeout(timeout, self.store.check())
            .await
            .unwrap_or_else(|_| {
                Err(Error::unavailable(format!(
                    "the store did not answer within {} s",
                    timeout.as_secs()
                )))
            })
    }

    /// Runs CPU-bound work on a transform worker (see [`crate::workers`]), pinned to
    /// a core of its own while there is one; beyond `max_queued_transforms` waiting,
    /// 429.
    async fn run_worker<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let cores = self.cores.clone();
        self.workers
            .run(move || {
                let _core = cores.as_ref().and_then(CoreSlots::take);
                work()
            })
            .await
    }

    async fn stream(&self, path: &Path, range: Option<ByteRange>) -> Result<Option<ObjectStream>> {
        let Some(range) = range else {
            return self.store.stream(path, None).await;
        };
        let Some(size) = self.store.size(path).await? else {
            return Ok(None);
        };
        let resolved = range
            .resolve(size)
            .ok_or_else(|| range_not_satisfiable(size))?;
        self.store.stream(path, Some(resolved)).await
    }

    async fn read_blob(&self, id: &ImageId) -> Result<Bytes> {
        self.store
            .read_pooled(&Store::blob_path(id), &self.upload_buffers)
            .await?
            .ok_or_else(|| image_not_found(id))
    }

    /// What the sidecar of a stored original says of it (the format, else sniffed from
    /// its bytes). Remembered in the hot cache: the bytes behind an id never change.
    async fn source(&self, id: &ImageId) -> Result<Source> {
        if let Some(source) = self.hot.source(id) {
            return Ok(source);
        }
        let sidecar = self.store.read_sidecar(id).await?.unwrap_or_default();
        let source = match sidecar.format.as_deref().and_then(Format::from_name) {
            Some(format) => Source {
                format,
                size: sidecar.width.zip(sidecar.height),
                bytes: sidecar.bytes,
            },
            None => {
                // Its first bytes tell the format; the rest is left unread.
                let head = self
                    .store
                    .read_head(&Store::blob_path(id), MAGIC_BYTES, &self.upload_buffers)
                    .await?
                    .ok_or_else(|| image_not_found(id))?;
                let format = Format::sniff(head.head()).ok_or_else(|| {
                    Error::unsupported(format!(
                        "stored image {id} is not in a format the engine reads"
                    ))
                })?;
                Source {
                    format,
                    size: None,
                    bytes: None,
                }
            }
        };
        self.hot.remember_source(id, source);
        Ok(source)
    }
}

fn page(images: Vec<(ImageId, Sidecar)>) -> Page {
    let next_cursor = images.last().map(|(id, _)| id.clone());
    Page {
        images,
        next_cursor,
    }
}

fn image_not_found(id: &ImageId) -> Error {
    Error::not_found("image_not_found", format!("there is no image {id}"))
}

fn range_not_satisfiable(size: u64) -> Error {
    Error::new(
        ErrorKind::RangeNotSatisfiable { size },
        "range_not_satisfiable",
        format!("the range lies outside the object's {size} bytes"),
    )
}

/// Wraps bytes already in memory as an object stream, cut to `range`.
fn object_from_bytes(bytes: Bytes, range: Option<ByteRange>) -> Result<ObjectStream> {
    let total_size = bytes.len() as u64;
    let range = match range {
        None => 0..total_size,
        Some(range) => range
            .resolve(total_size)
            .ok_or_else(|| range_not_satisfiable(total_size))?,
    };
    let body = bytes.slice(range.start as usize..range.end as usize);
    Ok(ObjectStream {
        total_size,
        range,
        body: stream::once(async move { Ok(body) }).boxed(),
    })
}

/// A request's hold on the flight computing one derived object in this process.
/// Dropped, it takes the flight out of the map once the flight has its result, or
/// when no other request still waits on it: a flight whose requests were all dropped
/// (their clients gone) would otherwise stay in the map for good.
struct FlightHold<'a> {
    in_flight: &'a Mutex<HashMap<Path, Flight>>,
    path: &'a Path,
    /// `None` only while dropping.
    flight: Option<Flight>,
}

impl<'a> FlightHold<'a> {
    /// Joins the flight for `path`, starting one if there is none.
    fn join(in_flight: &'a Mutex<HashMap<Path, Flight>>, path: &'a Path) -> Self {
        let mut map = in_flight.lock().expect("in-flight map lock");
        let flight = map.entry(path.clone()).or_default().clone();
        Self {
            in_flight,
            path,
            flight: Some(flight),
        }
    }

    fn flight(&self) -> &Flight {
        self.flight.as_ref().expect("held until dropped")
    }
}

impl Drop for FlightHold<'_> {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().expect("in-flight map lock");
        let Some(flight) = self.flight.take() else {
            return;
        };
        let ours = map.get(self.path).is_some_and(|f| Arc::ptr_eq(f, &flight));
        // The map's and ours are the last two, counted and released under the lock.
        if ours && (flight.initialized() || Arc::strong_count(&flight) == 2) {
            map.remove(self.path);
        }
        drop(flight);
    }
}

/// Runs work on tokio's blocking pool. A panic there (a decoder bug tripped by
/// hostile bytes) becomes a 422 for that image rather than a dead connection.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => Err(image_work_panicked(err.into_panic().as_ref())),
        Err(_) => Err(Error::internal("the blocking pool is shutting down")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_against_the_size() {
        assert_eq!(ByteRange::FromTo(0, 9).resolve(100), Some(0..10));
        assert_eq!(ByteRange::FromTo(90, 200).resolve(100), Some(90..100));
        assert_eq!(ByteRange::From(100).resolve(100), None);
        assert_eq!(ByteRange::Suffix(10).resolve(100), Some(90..100));
        assert_eq!(ByteRange::Suffix(500).resolve(100), Some(0..100));
    }

    #[tokio::test]
    async fn a_panic_on_the_blocking_pool_is_a_422() {
        let panicked = run_blocking(|| -> Result<()> { panic!("a decoder bug") })
            .await
            .unwrap_err();
        assert_eq!(panicked.kind, ErrorKind::Undecodable);
        assert_eq!(run_blocking(|| Ok(6 * 7)).await.unwrap(), 42);
    }

    #[tokio::test]
    async fn incoming_images_are_hashed_limited_and_budgeted() {
        let budget = Arc::new(MemoryBudget::new(1 << 30, 8));
        let buffers = Arc::new(BufferPool::new(1 << 20));
        let mut incoming = IncomingImage::new(5, None, Arc::clone(&budget), buffers.clone())
            .await
            .unwrap();
        incoming.push(b"abc").unwrap();
        assert_eq!(incoming.push(b"def").unwrap_err().code, "max_upload_bytes");
        let (id, bytes, memory) = {
            let mut ok = IncomingImage::new(5, Some(3), Arc::clone(&budget), buffers.clone())
                .await
                .unwrap();
            ok.push(b"abc").unwrap();
            ok.finish()
        };
        assert_eq!(id.as_str(), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(bytes, "abc");
        assert!(memory.bytes() >= 3);
        assert!(
            IncomingImage::new(5, Some(6), Arc::clone(&budget), buffers.clone())
                .await
                .is_err()
        );
        // A body of unknown length that outgrows a spent budget is refused.
        let small = Arc::new(MemoryBudget::new(4096, 8));
        let _held = small.reserve(4096).await.unwrap();
        let mut starved = IncomingImage::new(1 << 20, None, small, buffers)
            .await
            .unwrap();
        assert_eq!(starved.push(b"x").unwrap_err().code, "too_many_requests");
    }

    /// Transforms waiting for the one worker hold only the head of their source: the
    /// worker reads the rest as it starts the job, so one pooled buffer serves them all.
    #[tokio::test]
    async fn queued_transforms_read_their_source_when_a_worker_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        let settings = Settings {
            transform_workers: 1,
            ..Settings::default()
        };
        let service = Service::new(&settings, store).unwrap();
        let id = upload_noise_png(&service).await;
        let idle = service.upload_buffers.idle_bytes();
        assert!(idle > 0, "the upload's buffer is kept for reuse");
        let specs: Vec<_> = (0..6)
            .map(|step| {
                let pipeline = format!("resize(w={})", 100 + step);
                Arc::new(service.transform_spec(&pipeline, &[], None).unwrap())
            })
            .collect();
        let results =
            futures::future::join_all(specs.iter().map(|spec| service.transform(&id, spec, None)))
                .await;
        for (step, result) in results.into_iter().enumerate() {
            let bytes = result.unwrap().object.collect().await.unwrap();
            let image = image::load_from_memory(&bytes).unwrap();
            assert_eq!(image.width(), 100 + step as u32);
        }
        assert_eq!(
            service.upload_buffers.idle_bytes(),
            idle,
            "queued transforms read their sources into buffers of their own"
        );
    }

    /// A JPEG whose frame header comes after more than the head (320 KB of comments
    /// before it) is read whole before it queues, so that the memory it holds while it
    /// waits for a worker is reserved from its header, and transforms as any other.
    #[tokio::test]
    async fn a_header_past_the_head_is_read_whole_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        let settings = Settings {
            transform_workers: 1,
            ..Settings::default()
        };
        let service = Arc::new(Service::new(&settings, store).unwrap());
        let mut plain = Vec::new();
        image::RgbImage::from_pixel(64, 48, image::Rgb([200, 40, 90]))
            .write_to(
                &mut std::io::Cursor::new(&mut plain),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        let mut jpeg = plain[..2].to_vec();
        for _ in 0..5 {
            jpeg.extend_from_slice(&[0xFF, 0xFE, 0xFF, 0xFF]);
            jpeg.extend(std::iter::repeat_n(b'c', 0xFFFF - 2));
        }
        jpeg.extend_from_slice(&plain[2..]);
        let spec = Arc::new(service.transform_spec("resize(w=32)", &[], None).unwrap());
        let head = &jpeg[..SOURCE_HEAD as usize];
        assert_eq!(service.engine.working_memory(head, &spec), 0);
        let working = service.engine.working_memory(&jpeg, &spec);
        assert!(working > 0);
        let id = upload(&service, &jpeg).await;

        // The only worker is held, so that the transform waits in the queue.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let holder = tokio::spawn({
            let service = Arc::clone(&service);
            async move { service.workers.run(move || Ok(held.recv().is_ok())).await }
        });
        let transform = tokio::spawn({
            let service = Arc::clone(&service);
            async move {
                let fetched = service.transform(&id, &spec, None).await?;
                fetched.object.collect().await
            }
        });
        let started = Instant::now();
        while service.workers.running() == 0 || service.workers.waiting() == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "never queued");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            service.memory.reserved() >= working + jpeg.len() as u64,
            "{} reserved while queued: not from the header",
            service.memory.reserved()
        );
        release.send(()).unwrap();
        assert!(holder.await.unwrap().unwrap());
        let bytes = transform.await.unwrap().unwrap();
        let image = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (32, 24));
        let pixel = image.get_pixel(16, 12).0;
        assert!(
            pixel[0].abs_diff(200) < 8 && pixel[1].abs_diff(40) < 8,
            "{pixel:?}"
        );
    }

    /// Stores a 1200x900 PNG of noise, 3 MB: longer than the head read before a job
    /// queues.
    async fn upload_noise_png(service: &Service) -> ImageId {
        let noise = image::RgbImage::from_fn(1200, 900, |x, y| {
            image::Rgb([((x * 7) ^ (y * 13)) as u8, (x * y) as u8, (x + y * 3) as u8])
        });
        let mut png = Vec::new();
        noise
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(png.len() as u64 > SOURCE_HEAD);
        upload(service, &png).await
    }

    async fn upload(service: &Service, image: &[u8]) -> ImageId {
        let mut incoming = service.incoming(None).await.unwrap();
        incoming.push(image).unwrap();
        let (id, bytes, memory) = incoming.finish();
        let upload = Upload {
            id: id.clone(),
            bytes,
            file_name: None,
            name: None,
            desc: None,
            memory,
        };
        service.upload(upload).await.unwrap();
        id
    }

    /// A transform whose request is dropped mid-computation (its client gone) leaves
    /// no flight behind in the map.
    #[tokio::test]
    async fn an_abandoned_transform_leaves_nothing_in_flight() {
        let store = Store::open("memory://", &crate::config::S3Settings::default()).unwrap();
        let service = Service::new(&Settings::default(), store).unwrap();
        let id = upload_noise_png(&service).await;
        let query = [("format".to_string(), "png".to_string())];
        let spec = service
            .transform_spec("resize(w=1100)/sharpen(sigma=3)", &query, None)
            .unwrap();
        let spec = Arc::new(spec);
        let mut transform = Box::pin(service.transform(&id, &spec, None));
        let started = Instant::now();
        while service.in_flight.lock().unwrap().is_empty() {
            assert!(
                futures::poll!(&mut transform).is_pending(),
                "finished at once"
            );
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never in flight"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(futures::poll!(&mut transform).is_pending());
        drop(transform);
        assert!(service.in_flight.lock().unwrap().is_empty());
    }
}
