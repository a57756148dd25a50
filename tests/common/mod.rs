//! Shared test support: a real server on an ephemeral port over a real store (a
//! temporary directory, memory, or a prefix on a real S3 server), and generated images
//! whose pixels the tests can predict.
//!
//! Integration tests take the store [`Backend`] as a parameter and are listed in
//! [`on_every_store!`], which runs each of them once per backend.

#![allow(dead_code)] // each test binary uses its own subset

pub mod instance;
pub mod s3;

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use futures::TryStreamExt;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use progimage::http::{serve, App};
use progimage::service::Service;
use progimage::store::Store;
use progimage::Settings;

pub use progimage::engine::ENGINE_VERSION;
use sha1::{Digest, Sha1};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The allocator the binary runs with, so the server in these tests holds its
/// buffers as it does in production (see `hugepages`, `buffers`).
#[global_allocator]
static ALLOCATOR: progimage::hugepages::HugePages = progimage::hugepages::HugePages;

/// Runs each listed test, an `async fn(Backend)`, once per store backend, as
/// `filesystem::<name>`, `memory::<name>` and `s3::<name>`.
#[allow(unused_macros)]
macro_rules! on_every_store {
    ($($test:ident),* $(,)?) => {
        $crate::common::tests_on!(filesystem, Filesystem, $($test),*);
        $crate::common::tests_on!(memory, Memory, $($test),*);
        $crate::common::tests_on!(s3, S3, $($test),*);
    };
}

/// As [`on_every_store!`], for the stores several processes can share: a directory
/// and S3 (memory is private to one process).
#[allow(unused_macros)]
macro_rules! on_shared_stores {
    ($($test:ident),* $(,)?) => {
        $crate::common::tests_on!(filesystem, Filesystem, $($test),*);
        $crate::common::tests_on!(s3, S3, $($test),*);
    };
}

/// `mod <module>` with one `#[tokio::test]` per test, calling it with `Backend::<backend>`.
#[allow(unused_macros)]
macro_rules! tests_on {
    ($module:ident, $backend:ident, $($test:ident),*) => {
        mod $module {
            $(#[tokio::test]
            async fn $test() {
                super::$test($crate::common::Backend::$backend).await
            })*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use {on_every_store, on_shared_stores, tests_on};

/// The store backends the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A temporary directory.
    Filesystem,
    /// object_store's in-memory store, shared by the server and the test.
    Memory,
    /// A fresh prefix on the shared moto server (see [`s3`]).
    S3,
}

/// A running server and a handle on its store, to check what was stored.
pub struct TestServer {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub backend: Backend,
    /// The store's URL, as the server was given it.
    pub store_url: String,
    pub store: Store,
    pub client: reqwest::Client,
    /// Keeps a filesystem store's directory alive.
    _dir: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn on(backend: Backend) -> Self {
        Self::on_with(backend, |_| {}).await
    }

    /// Starts a server after `configure` has adjusted the default settings.
    pub async fn on_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings::default();
        let dir = match backend {
            Backend::Filesystem => {
                let dir = tempfile::tempdir().unwrap();
                settings.store = dir.path().to_str().unwrap().to_string();
                Some(dir)
            }
            Backend::Memory => {
                settings.store = "memory://".to_string();
                None
            }
            Backend::S3 => {
                let server = s3::shared();
                settings.store = s3::fresh_store_url();
                settings.s3 = server.settings();
                None
            }
        };
        configure(&mut settings);
        let store = Store::open(&settings.store, &settings.s3).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store_url = settings.store.clone();
        let service = Service::new(&settings, store.clone()).unwrap();
        let app = Arc::new(App::new(&settings, service).unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            serve(listener, app, &settings, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            base: format!("http://{addr}"),
            addr,
            backend,
            store_url,
            store,
            client: reqwest::Client::new(),
            _dir: dir,
            stop: Some(stop),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every object in the store, by key, sorted.
    pub async fn stored_files(&self) -> Vec<String> {
        stored_keys(&self.store).await
    }

    /// The object at `key`, if there is one.
    pub async fn read_object(&self, key: &str) -> Option<Vec<u8>> {
        self.store
            .read(&key.into())
            .await
            .unwrap()
            .map(|bytes| bytes.to_vec())
    }

    /// Puts `bytes` at `key`, replacing what is there (to plant or tamper with objects).
    pub async fn write_object(&self, key: &str, bytes: &[u8]) {
        let path = key.into();
        self.store.delete(&path).await.unwrap();
        self.store
            .put_if_absent(&path, bytes.to_vec().into())
            .await
            .unwrap();
    }

    /// Uploads raw bytes with an image/* content type and returns the JSON reply.
    pub async fn upload(&self, bytes: &[u8]) -> serde_json::Value {
        let response = self.post_raw("/", "image/jpeg", bytes.to_vec()).await;
        assert!(
            response.status().is_success(),
            "upload failed: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// Uploads raw bytes and returns the id the server gave them.
    pub async fn upload_id(&self, bytes: &[u8]) -> String {
        self.upload(bytes).await["id"].as_str().unwrap().to_string()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client.delete(self.url(path)).send().await.unwrap()
    }

    /// GETs `path` and returns the body, whatever the status.
    pub async fn get_bytes(&self, path: &str) -> bytes::Bytes {
        self.get(path).await.bytes().await.unwrap()
    }

    pub async fn get_image(&self, path: &str) -> DynamicImage {
        decode(&self.get_bytes(path).await)
    }

    /// GETs `path` and parses the body as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path).await.json().await.unwrap()
    }

    /// POSTs a multipart form.
    pub async fn post_form(&self, path: &str, form: reqwest::multipart::Form) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// POSTs a raw body with a content type.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A store that several processes open: its URL, the variables that reach it, and a
/// handle for the test to look inside.
pub struct SharedStore {
    pub url: String,
    pub env: Vec<(&'static str, String)>,
    pub store: Store,
    _dir: Option<TempDir>,
}

impl SharedStore {
    pub fn new(backend: Backend) -> Self {
        match backend {
            Backend::Filesystem => {
                let dir = tempfile::tempdir().unwrap();
                let url = dir.path().to_str().unwrap().to_string();
                Self {
                    store: Store::open(&url, &Default::default()).unwrap(),
                    url,
                    env: Vec::new(),
                    _dir: Some(dir),
                }
            }
            Backend::S3 => {
                let server = s3::shared();
                let url = s3::fresh_store_url();
                Self {
                    store: Store::open(&url, &server.settings()).unwrap(),
                    url,
                    env: server.env(),
                    _dir: None,
                }
            }
            Backend::Memory => panic!("a memory store cannot be shared between processes"),
        }
    }

    pub fn spawn_instance(&self) -> instance::Instance {
        instance::Instance::spawn(&self.url, &self.env)
    }

    /// An instance started with a settings file holding `toml` (kept in `dir`).
    pub fn spawn_instance_with(&self, dir: &TempDir, toml: &str) -> instance::Instance {
        let path = dir.path().join("settings.toml");
        std::fs::write(&path, toml).unwrap();
        let mut env = self.env.clone();
        env.push(("PROGIMAGE_CONFIG", path.to_str().unwrap().to_string()));
        instance::Instance::spawn(&self.url, &env)
    }
}

/// Every object in `store`, by key, sorted.
pub async fn stored_keys(store: &Store) -> Vec<String> {
    let mut keys: Vec<String> = store
        .list(None)
        .map_ok(|listed| listed.key)
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

/// Checks the store's invariants: every blob's bytes hash to its id (nothing partial
/// under a real id), every sidecar and cached transform has its blob, and no lease is
/// left behind. Returns the ids of the blobs.
pub async fn assert_consistent(store: &Store) -> Vec<String> {
    let keys = stored_keys(store).await;
    let mut blobs = Vec::new();
    for key in &keys {
        assert!(
            !key.starts_with("leases/"),
            "a lease was left behind: {key}"
        );
        let name = key.rsplit('/').next().unwrap();
        let (id, rest) = name.split_at(name.len().min(40));
        assert_eq!(
            key,
            &format!("{}/{name}", &blob_key(id)[..3]),
            "misplaced {key}"
        );
        if rest.is_empty() {
            let bytes = store.read(&key.as_str().into()).await.unwrap().unwrap();
            assert_eq!(sha1_hex(&bytes), id, "blob {key} does not hash to its id");
            blobs.push(id.to_string());
        } else {
            assert!(keys.contains(&blob_key(id)), "{key} has no blob beside it");
        }
    }
    blobs
}

/// The lowercase hex SHA-1 of some bytes: what an id must be.
/// Installs `requirement` with pip unless `python3` can already import `module`
/// (`.ci/run` installs the test tools up front; this keeps a bare `cargo test` working).
pub fn ensure_python_module(module: &str, requirement: &str) {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let importable = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !importable {
        eprintln!("installing {requirement} with pip");
        let status = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", requirement])
            .status()
            .expect("python3 runs");
        assert!(status.success(), "pip install {requirement} failed");
    }
}

pub fn sha1_hex(bytes: &[u8]) -> String {
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `<h0>/<h1>/<id>`.
pub fn blob_key(id: &str) -> String {
    format!("{}/{}/{id}", &id[0..1], &id[1..2])
}

/// A test image: left half red, right half blue, so orientation is visible.
pub fn halves(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, _| {
        if x < width / 2 {
            Rgb([220, 20, 20])
        } else {
            Rgb([20, 20, 220])
        }
    }))
}

/// Deterministic noise, which no encoder can shrink much.
/// Pseudo-random pixels: incompressible, so every byte of an encoding matters.
pub fn noise(width: u32, height: u32) -> RgbImage {
    let mut state = 0x2545_f491_u32;
    RgbImage::from_fn(width, height, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let [r, g, b, _] = state.to_le_bytes();
        Rgb([r, g, b])
    })
}

/// The value of the sample `name` (with its labels) in a metrics page.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The noise PNG a slow transform is computed from: see [`slow_transform`].
pub fn slow_source() -> Vec<u8> {
    noise_png(2400, 1800)
}

/// A transform of [`slow_source`] that takes hundreds of milliseconds even here:
/// Lanczos to 2300 px, sharpened, as a PNG; `sigma` makes distinct cache keys.
pub fn slow_transform(id: &str, sigma: u32) -> String {
    format!("/images/{id}/resize(w=2300)/sharpen(sigma={sigma})/?format=png")
}

pub fn noise_png(width: u32, height: u32) -> Vec<u8> {
    encode(
        &DynamicImage::ImageRgb8(noise(width, height)),
        ImageFormat::Png,
    )
}

pub fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    encode(&halves(width, height), ImageFormat::Jpeg)
}

pub fn png(width: u32, height: u32) -> Vec<u8> {
    encode(&halves(width, height), ImageFormat::Png)
}

/// A TIFF block (the body of EXIF) holding only an Orientation tag.
fn exif_orientation(orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0*\0\0\0\x08"); // big-endian TIFF, first IFD at 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // one value
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    tiff
}

/// A JPEG with an EXIF APP1 segment holding only an Orientation tag.
pub fn jpeg_with_orientation(image: &DynamicImage, orientation: u16) -> Vec<u8> {
    let jpeg = encode(image, ImageFormat::Jpeg);
    let tiff = exif_orientation(orientation);
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
    app1.extend_from_slice(b"Exif\0\0");
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// An extended (VP8X) lossless WebP with an EXIF chunk holding an Orientation tag,
/// bare as the WebP spec says or behind the `Exif\0\0` prefix some writers add.
pub fn webp_with_orientation(image: &DynamicImage, orientation: u16, exif_prefix: bool) -> Vec<u8> {
    let simple = encode(&DynamicImage::ImageRgb8(image.to_rgb8()), ImageFormat::WebP);
    let bitstream = &simple[12..]; // the VP8L chunk, header included
    let chunk = |tag: &[u8], body: &[u8]| {
        let mut chunk = tag.to_vec();
        chunk.extend_from_slice(&(body.len() as u32).to_le_bytes());
        chunk.extend_from_slice(body);
        if body.len() % 2 == 1 {
            chunk.push(0);
        }
        chunk
    };
    let mut vp8x = vec![0x08, 0, 0, 0]; // flags: EXIF present
    vp8x.extend_from_slice(&(image.width() - 1).to_le_bytes()[..3]);
    vp8x.extend_from_slice(&(image.height() - 1).to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    body.extend(chunk(b"VP8X", &vp8x));
    body.extend_from_slice(bitstream);
    let mut exif = if exif_prefix {
        b"Exif\0\0".to_vec()
    } else {
        Vec::new()
    };
    exif.extend(exif_orientation(orientation));
    body.extend(chunk(b"EXIF", &exif));
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

/// A fixture file from tests/fixtures.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// Decodes a response body as an image.
pub fn decode(bytes: &[u8]) -> DynamicImage {
    image::load_from_memory(bytes).expect("response is an image")
}

/// Whether a pixel is clearly red (as in [`halves`], after lossy compression).
pub fn is_red(image: &DynamicImage, x: u32, y: u32) -> bool {
    let [r, _, b] = image.to_rgb8().get_pixel(x, y).0;
    r > 150 && b < 100
}

/// Whether a pixel is clearly blue.
pub fn is_blue(image: &DynamicImage, x: u32, y: u32) -> bool {
    let [r, _, b] = image.to_rgb8().get_pixel(x, y).0;
    b > 150 && r < 100
}

/// Asserts a JSON error response and returns its message.
pub async fn expect_error(
    response: reqwest::Response,
    status: reqwest::StatusCode,
    code: &str,
) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"]["message"].as_str().unwrap().to_string()
}

/// Checks a "come back later" answer: `Retry-After: 1` and the JSON error `code`.
/// Returns the error's message.
pub async fn assert_retry_later(response: reqwest::Response, code: &str) -> String {
    assert_eq!(response.headers()["retry-after"], "1");
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], code);
    error["error"]["message"].as_str().unwrap().to_string()
}

/// The part of a cached result's name that says it is one: `.e<ENGINE_VERSION>.`.
pub fn derived_marker() -> String {
    format!(".e{ENGINE_VERSION}.")
}
