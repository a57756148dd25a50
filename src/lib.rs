//! progimage: a database-free, content-addressed image store and transformer.
//!
//! An uploaded image is named by the SHA-1 of its bytes and kept in an
//! [`object_store`] backend next to a small JSON sidecar. Transforms are computed
//! lazily on the first request and cached as sibling objects, so the store alone is
//! the truth: everything can be listed, inspected and rebuilt from it.
//!
//! # A map of the crate
//!
//! Data flows one way:
//!
//! ```text
//! request ──> http ──> service ──┬──> engine   (bytes in, bytes out; knows pixels)
//!                                └──> store    (objects in, objects out; knows keys)
//! ```
//!
//! - [`config`]: settings from `settings/*.toml`, then `PROGIMAGE_*` variables, then flags.
//! - [`http`]: the hyper server: routing, upload parsing, conditional and range
//!   responses, JSON errors. It knows the [`service`] but nothing of object_store.
//! - [`service`]: the one place that knows both the store and the engine: upload
//!   (hash, validate, put-if-absent, sidecar), fetch, and transforms with the cache
//!   and single-flight coalescing.
//! - [`store`]: the object layout (`<h0>/<h1>/<id>`, `<id>.meta`, `<id>.<transform
//!   key>`), the sidecar and transform leases, as a thin layer over any object_store
//!   backend (a directory, S3, memory); on a directory, originals are written around
//!   the page cache (`store::direct`).
//! - [`engine`]: probing, decoding (with limits and EXIF orientation), the transforms
//!   (one file each under `engine/ops/`) and encoding. Pure: bytes in, bytes out.
//! - [`migrate`]: `progimage migrate`, copying one store into another.
//! - [`fetch`]: upload by URL, with the SSRF rules.
//! - [`signing`]: signed transform URLs (HMAC-SHA256), for the server and `progimage sign`.
//! - [`metrics`]: the counters and histograms `GET /metrics` reports.
//! - [`hot`]: recently served transform results in memory, in front of the store.
//! - [`logs`]: log lines to stderr in batches, off the request path, and the request
//!   line, formatted by hand.
//! - `hugepages`: the global allocator (Linux): large buffers in 2 MiB pages.
//! - [`budget`]: the memory budget uploads and transforms reserve from before holding bytes.
//! - [`buffers`]: upload buffers kept for reuse, so uploads land in memory already mapped.
//! - [`workers`]: the threads transform jobs run on, taking them from one queue.
//! - [`cores`]: affinity masks, for the pinned serving threads and the core each
//!   transform job holds while it runs.
//! - [`error`]: the one error type, whose kind decides the HTTP status and JSON code.

pub mod budget;
pub mod buffers;
pub mod config;
pub mod cores;
pub mod engine;
pub mod error;
pub mod fetch;
pub mod hot;
pub mod http;
#[cfg(target_os = "linux")]
pub mod hugepages;
pub mod logs;
pub mod metrics;
pub mod migrate;
pub mod service;
pub mod signing;
pub mod store;
pub mod workers;

pub use config::Settings;
pub use error::{Error, ErrorKind};
