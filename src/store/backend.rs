//! Store URLs to object_store backends: a directory, S3 (or anything speaking its
//! API), or memory. Everything above this file sees one `dyn ObjectStore`.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};

use super::direct::DirectFiles;
use crate::config::S3Settings;
use crate::error::{Error, Result};

/// An opened backend and how large objects are written to it.
pub struct Backend {
    pub objects: Arc<dyn ObjectStore>,
    /// The same objects, written so that a completed put survives a power cut: the
    /// filesystem backend syncs the file and its directory before answering (and writes
    /// large ones around the page cache, see `direct`); object
    /// stores are durable when they acknowledge, so there it is `objects` again.
    pub durable: Arc<dyn ObjectStore>,
    /// Objects above this many bytes are written with a multipart upload.
    pub multipart_threshold: u64,
    pub multipart_part: usize,
}

impl Backend {
    /// Opens the backend a store URL names: a plain path or `file:///abs/path` (created
    /// if missing), `s3://bucket/optional/prefix`, or `memory://`.
    pub fn open(url: &str, s3: &S3Settings) -> Result<Self> {
        if url == "memory://" || url == "memory:" {
            let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            return Ok(Self::whole_puts(Arc::clone(&memory), memory));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            return open_s3(rest, s3);
        }
        let dir = url.strip_prefix("file://").unwrap_or(url);
        if dir.is_empty() || dir.contains("://") {
            return Err(Error::bad_request(
                "store_unsupported",
                format!(
                    "unknown store URL '{url}': use a path, file:///abs/path, s3://bucket/prefix or memory://"
                ),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|err| {
            Error::bad_request("store_unusable", format!("cannot create {dir}: {err}"))
        })?;
        let local = || {
            LocalFileSystem::new_with_prefix(dir).map_err(|err| {
                Error::bad_request("store_unusable", format!("cannot open {dir}: {err}"))
            })
        };
        Ok(Self::whole_puts(
            Arc::new(local()?),
            Arc::new(DirectFiles::new(local()?.with_fsync(true))),
        ))
    }

    /// A backend written with single puts: a local file is staged and renamed whatever
    /// its size, so parts would only add round trips.
    fn whole_puts(objects: Arc<dyn ObjectStore>, durable: Arc<dyn ObjectStore>) -> Self {
        Self {
            objects,
            durable,
            multipart_threshold: u64::MAX,
            multipart_part: usize::MAX,
        }
    }
}

/// `bucket/prefix` with the settings over the `AWS_*` variables. Create-if-absent puts
/// (`If-None-Match: *`) are required: AWS S3, MinIO, R2, Ceph and s3s honour them.
fn open_s3(bucket_and_prefix: &str, settings: &S3Settings) -> Result<Backend> {
    let (bucket, prefix) = bucket_and_prefix
        .split_once('/')
        .unwrap_or((bucket_and_prefix, ""));
    if bucket.is_empty() {
        return Err(Error::bad_request(
            "store_unsupported",
            "an S3 store URL needs a bucket: s3://bucket/optional/prefix",
        ));
    }
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        // Set key by key: `with_client_options` would drop what `from_env` read
        // (AWS_ALLOW_HTTP among it).
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            format!("{}s", settings.request_timeout_secs),
        )
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            format!("{}s", settings.connect_timeout_secs),
        )
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: settings.max_retries,
            retry_timeout: Duration::from_secs(settings.retry_timeout_secs),
        });
    let text_options = [
        (
            &settings.endpoint,
            AmazonS3Builder::with_endpoint as fn(_, String) -> _,
        ),
        (&settings.region, AmazonS3Builder::with_region),
        (&settings.access_key_id, AmazonS3Builder::with_access_key_id),
        (
            &settings.secret_access_key,
            AmazonS3Builder::with_secret_access_key,
        ),
        (&settings.session_token, AmazonS3Builder::with_token),
    ];
    for (value, apply) in text_options {
        if !value.is_empty() {
            builder = apply(builder, value.clone());
        }
    }
    if settings.allow_http {
        builder = builder.with_allow_http(true);
    }
    if settings.virtual_hosted_style {
        builder = builder.with_virtual_hosted_style_request(true);
    }
    let s3 = builder.build().map_err(|err| {
        Error::bad_request(
            "store_unusable",
            format!("cannot configure the S3 store s3://{bucket_and_prefix}: {err}"),
        )
    })?;
    let prefix = prefix.trim_matches('/');
    let objects: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(s3)
    } else {
        Arc::new(PrefixStore::new(s3, prefix))
    };
    Ok(Backend {
        durable: Arc::clone(&objects),
        objects,
        multipart_threshold: settings.multipart_threshold_bytes,
        multipart_part: usize::try_from(settings.multipart_part_bytes).unwrap_or(usize::MAX),
    })
}
