//! Settings: built-in defaults, then a TOML file, then `PROGIMAGE_*` environment
//! variables, then command-line flags, later ones winning.
//!
//! `settings/default.toml` documents every key and holds exactly the built-in defaults
//! (a unit test keeps the two equal), so `progimage serve` needs no file at all.
//! Environment variables and flags are declared together in `main.rs` with clap's
//! `env` support, which gives "flag beats variable"; [`Overrides`] then beats the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Everything the service can be configured with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Where images live: a plain path, `file:///abs/path`, `s3://bucket/prefix` or
    /// `memory://`.
    pub store: String,
    /// Base URL used in `Location` headers and JSON `url` fields, for deployments
    /// behind a proxy that does not send `X-Forwarded-*`. Empty: derive from the request.
    pub public_url: String,
    /// How many decode/resize/encode jobs run at once; 0 means one per CPU core, plus one.
    pub transform_workers: usize,
    /// Seconds a transform lease lives: while one instance computes a transform, the
    /// others wait for its result this long at most (a crashed holder blocks no one longer).
    pub transform_lease_secs: u64,
    /// Milliseconds a cache miss computes before it takes a lease: renders quicker than
    /// this never write one. 0: every miss takes its lease before computing.
    pub transform_lease_after_ms: u64,
    /// Whether transform results are stored beside their original. Off, every GET of a
    /// transform computes it (concurrent requests for one still compute it once), for
    /// deployments whose CDN caches the results: the store then holds originals only.
    pub store_transforms: bool,
    /// Seconds in-flight requests get to finish after SIGTERM before the process exits.
    pub shutdown_grace_secs: u64,
    /// Bytes of recently served transform results kept in memory (see [`crate::hot`]);
    /// 0 turns that off.
    pub hot_cache_bytes: u64,
    /// Seconds an image's format and size are trusted from memory before its sidecar
    /// is read again: how long an instance may go on serving cached transforms of an
    /// image deleted through another instance sharing the store.
    pub hot_cache_source_secs: u64,
    /// Limits against abuse.
    pub limits: Limits,
    /// How to reach an `s3://` store.
    pub s3: S3Settings,
    /// Who may do what: API keys, private reads, signed transform URLs.
    pub access: Access,
    /// Upload by URL: how remote images are fetched.
    pub fetch: Fetch,
    /// Named pipelines, usable as `GET /images/<id>/<name>/`, e.g.
    /// `avatar = "crop(aspect=1:1)/resize(w=96)"`.
    pub presets: BTreeMap<String, String>,
}

/// Access control. With no keys and no signing key, everything is open.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Access {
    /// Keys accepted in `Authorization: Bearer <key>`; several allow rotation. When any
    /// is set, uploads, deletes, metadata changes and on-demand transforms need one.
    pub api_keys: Vec<String>,
    /// Reads (images, metadata, listings, transforms) need a key too.
    pub private: bool,
    /// When set, transform URLs need `sig=` (HMAC-SHA256 of the path and query).
    pub signing_key: String,
    /// Presets that need no signature.
    pub public_presets: Vec<String>,
}

/// Fetching images from URLs (`POST /` with `{"url": ...}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fetch {
    /// Seconds the whole fetch (connect, redirects, body) may take.
    pub timeout_secs: u64,
    /// Redirects followed at most.
    pub max_redirects: usize,
    /// Networks (CIDR, e.g. `10.0.0.0/8`) opened despite the SSRF protection, which
    /// otherwise refuses private, loopback, link-local and other non-public addresses.
    pub allow_networks: Vec<String>,
}

impl Default for Fetch {
    fn default() -> Self {
        Self {
            timeout_secs: 10,
            max_redirects: 3,
            allow_networks: Vec::new(),
        }
    }
}

/// Limits that protect the service from oversized or hostile input.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted upload body, in bytes (413 beyond it).
    pub max_upload_bytes: u64,
    /// Largest accepted image, in pixels (width x height) as its header claims (413).
    pub max_input_pixels: u64,
    /// Largest image any transform step may produce, in pixels (413 beyond it),
    /// checked before decoding.
    pub max_output_pixels: u64,
    /// Most frames an animation may have when `animated=true` keeps them (413 beyond).
    pub max_frames: u64,
    /// Seconds a client has to send its request headers before the connection closes.
    pub header_read_timeout_secs: u64,
    /// Seconds a request body may send nothing before it is refused (408).
    pub body_read_timeout_secs: u64,
    /// Least average rate of a request body once `body_read_timeout_secs` have passed
    /// (408 below it); 0 checks none.
    pub min_body_bytes_per_sec: u64,
    /// Seconds a response may make no progress (a client that stopped reading) before
    /// the connection is dropped.
    pub write_timeout_secs: u64,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Bytes of images held at once: upload buffers and transforms' working memory
    /// (estimated from the header) are reserved from it before they are held.
    pub memory_budget_bytes: u64,
    /// Jobs that may wait for a worker, and uploads and transforms that may wait for
    /// the memory budget; beyond them a request gets 429.
    pub max_queued_transforms: usize,
}

/// Options for `s3://` stores. Empty strings and `false` leave the standard `AWS_*`
/// variables (what object_store's `AmazonS3Builder::from_env` reads) in charge.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// e.g. `http://127.0.0.1:9000` for MinIO; empty: AWS (or `AWS_ENDPOINT_URL`).
    pub endpoint: String,
    /// Empty: `AWS_REGION`, else `us-east-1`.
    pub region: String,
    /// Allow a plain-HTTP endpoint (or `AWS_ALLOW_HTTP=true`).
    pub allow_http: bool,
    /// `https://bucket.host/key` instead of the path style `https://host/bucket/key`.
    pub virtual_hosted_style: bool,
    /// Empty: `AWS_ACCESS_KEY_ID` (then instance or web-identity credentials).
    pub access_key_id: String,
    /// Empty: `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// Empty: `AWS_SESSION_TOKEN`.
    pub session_token: String,
    /// Seconds one request to the store may take, body included.
    pub request_timeout_secs: u64,
    /// Seconds to open a connection to the store.
    pub connect_timeout_secs: u64,
    /// Retries of a failed request (with exponential backoff and jitter).
    pub max_retries: usize,
    /// Seconds after which no more retries start: the bound on how long a client waits
    /// before an unreachable store becomes a 503.
    pub retry_timeout_secs: u64,
    /// Objects larger than this go up as a multipart upload.
    pub multipart_threshold_bytes: u64,
    /// The part size of multipart uploads (S3 requires at least 5 MiB).
    pub multipart_part_bytes: u64,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            region: String::new(),
            allow_http: false,
            virtual_hosted_style: false,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            session_token: String::new(),
            request_timeout_secs: 30,
            connect_timeout_secs: 5,
            max_retries: 3,
            retry_timeout_secs: 10,
            multipart_threshold_bytes: 16 * 1024 * 1024,
            multipart_part_bytes: 8 * 1024 * 1024,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5070)),
            store: "./data".to_string(),
            public_url: String::new(),
            transform_workers: 0,
            transform_lease_secs: 60,
            transform_lease_after_ms: 100,
            store_transforms: true,
            shutdown_grace_secs: 30,
            hot_cache_bytes: 64 * 1024 * 1024,
            hot_cache_source_secs: 60,
            limits: Limits::default(),
            s3: S3Settings::default(),
            access: Access::default(),
            fetch: Fetch::default(),
            presets: BTreeMap::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 50 * 1024 * 1024,
            max_input_pixels: 50_000_000,
            max_output_pixels: 50_000_000,
            max_frames: 100,
            header_read_timeout_secs: 30,
            body_read_timeout_secs: 30,
            min_body_bytes_per_sec: 1024,
            write_timeout_secs: 30,
            max_connections: 1024,
            memory_budget_bytes: 256 * 1024 * 1024,
            max_queued_transforms: 64,
        }
    }
}

/// Values from the environment or the command line, applied over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub store: Option<String>,
    pub public_url: Option<String>,
    pub transform_workers: Option<usize>,
    pub max_upload_bytes: Option<u64>,
    pub max_input_pixels: Option<u64>,
    pub api_keys: Option<Vec<String>>,
    pub signing_key: Option<String>,
}

impl Settings {
    /// Reads the file if one is given, then applies the overrides.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Self> {
        let mut settings = match file {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        settings.apply(overrides);
        settings.check()?;
        Ok(settings)
    }

    /// Refuses limits of 0 where 0 cannot mean anything useful: no connection would
    /// ever be served, every body would time out at once, and so on.
    fn check(&self) -> Result<()> {
        let limits = &self.limits;
        let zero = [
            ("limits.max_connections", limits.max_connections as u64),
            (
                "limits.header_read_timeout_secs",
                limits.header_read_timeout_secs,
            ),
            (
                "limits.body_read_timeout_secs",
                limits.body_read_timeout_secs,
            ),
            ("limits.write_timeout_secs", limits.write_timeout_secs),
            ("limits.max_upload_bytes", limits.max_upload_bytes),
            ("limits.memory_budget_bytes", limits.memory_budget_bytes),
        ]
        .into_iter()
        .find(|(_, value)| *value == 0);
        match zero {
            Some((name, _)) => Err(Error::bad_request(
                "config_invalid",
                format!("{name} must be more than 0"),
            )),
            None => Ok(()),
        }
    }

    /// Parses a TOML settings file; unknown keys are an error, missing keys default.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            Error::bad_request(
                "config_unreadable",
                format!("cannot read {}: {err}", path.display()),
            )
        })?;
        toml::from_str(&text).map_err(|err| {
            Error::bad_request(
                "config_invalid",
                format!("invalid settings in {}: {err}", path.display()),
            )
        })
    }

    fn apply(&mut self, overrides: Overrides) {
        let Overrides {
            listen,
            store,
            public_url,
            transform_workers,
            max_upload_bytes,
            max_input_pixels,
            api_keys,
            signing_key,
        } = overrides;
        if let Some(value) = listen {
            self.listen = value;
        }
        if let Some(value) = store {
            self.store = value;
        }
        if let Some(value) = public_url {
            self.public_url = value;
        }
        if let Some(value) = transform_workers {
            self.transform_workers = value;
        }
        if let Some(value) = max_upload_bytes {
            self.limits.max_upload_bytes = value;
        }
        if let Some(value) = max_input_pixels {
            self.limits.max_input_pixels = value;
        }
        if let Some(value) = api_keys {
            self.access.api_keys = value;
        }
        if let Some(value) = signing_key {
            self.access.signing_key = value;
        }
    }

    /// The number of transform jobs allowed to run at once.
    pub fn effective_workers(&self) -> usize {
        match self.transform_workers {
            // One more than the cores: measured +5-10% uncached thumbnails a second on
            // 2 cores when jobs waited on a semaphore, the same as one per core since
            // they are pulled from a queue (DECISIONS, "CPU work off the runtime,
            // bounded").
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()) + 1,
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_file_matches_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("settings/default.toml");
        assert_eq!(Settings::from_file(&path).unwrap(), Settings::default());
    }

    #[test]
    fn overrides_beat_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "store = \"/from/file\"\n[limits]\nmax_upload_bytes = 10\n",
        )
        .unwrap();
        let settings = Settings::load(
            Some(&path),
            Overrides {
                store: Some("memory://".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(settings.store, "memory://");
        assert_eq!(settings.limits.max_upload_bytes, 10);
    }

    #[test]
    fn limits_of_zero_that_would_stop_the_server_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "[limits]\nmax_connections = 0\n").unwrap();
        let err = Settings::load(Some(&path), Overrides::default()).unwrap_err();
        assert!(err.message.contains("limits.max_connections"), "{err}");
        std::fs::write(&path, "[limits]\nmax_connections = 1\n").unwrap();
        assert!(Settings::load(Some(&path), Overrides::default()).is_ok());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "listn = \"1.2.3.4:5\"\n").unwrap();
        let err = Settings::from_file(&path).unwrap_err();
        assert!(err.message.contains("listn"), "{err}");
    }
}
