//! Uploads over HTTP: content addressing, the store layout, duplicates, form fields.

mod common;

use std::path::Path;

use common::on_every_store;
use common::*;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use tempfile::TempDir;

on_every_store!(
    multipart_upload_is_stored_under_its_sha1,
    raw_body_upload_works_on_both_upload_paths,
    duplicate_upload_is_200_with_the_same_answer_and_writes_nothing,
    a_form_without_the_image_field_is_400_naming_it,
    location_follows_forwarded_headers_or_the_public_url,
    concurrent_identical_uploads_leave_one_blob_and_one_sidecar,
    uploads_in_reused_buffers_store_exactly_their_own_bytes,
);

/// A server whose filesystem store is a directory the test owns, so the test can also
/// check what only the directory shows (modification times, stray staging files); on
/// the other backends, just a server.
async fn server_with_dir(backend: Backend) -> (TestServer, Option<TempDir>) {
    let dir = (backend == Backend::Filesystem).then(|| tempfile::tempdir().unwrap());
    let server = TestServer::on_with(backend, |s| {
        if let Some(dir) = &dir {
            s.store = dir.path().to_str().unwrap().to_string();
        }
    })
    .await;
    (server, dir)
}

/// Every file under `root`, relative to it, sorted: what is really on disk.
fn files_on_disk(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, files: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, files);
            } else {
                let relative = path.strip_prefix(root).unwrap();
                files.push(relative.to_str().unwrap().to_string());
            }
        }
    }
    let mut files = Vec::new();
    walk(root, root, &mut files);
    files.sort();
    files
}

async fn multipart_upload_is_stored_under_its_sha1(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = jpeg(256, 192);
    let id = sha1_hex(&bytes);
    let form = Form::new()
        .part("image", Part::bytes(bytes.clone()).file_name("cat.jpg"))
        .text("name", "Cat")
        .text("desc", "A red and blue cat");
    let response = server.post_form("/", form).await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(location, format!("{}/images/{id}/", server.base));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["id"], id);
    assert_eq!(body["msg"], "ok");
    assert_eq!(body["url"], location);
    assert_eq!(body["format"], "jpeg");
    assert_eq!(
        (body["width"].as_u64(), body["height"].as_u64()),
        (Some(256), Some(192))
    );
    assert_eq!(body["bytes"].as_u64(), Some(bytes.len() as u64));
    assert_eq!(body["content_type"], "image/jpeg");

    assert_eq!(server.read_object(&blob_key(&id)).await.unwrap(), bytes);
    let sidecar: serde_json::Value = serde_json::from_slice(
        &server
            .read_object(&format!("{}.meta", blob_key(&id)))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["file_name"], "cat.jpg");
    assert_eq!(sidecar["name"], "Cat");
    assert_eq!(sidecar["desc"], "A red and blue cat");
    assert_eq!(sidecar["width"], 256);
    assert!(sidecar["created"].as_str().unwrap().starts_with("20"));
    assert_eq!(
        server.stored_files().await,
        vec![blob_key(&id), format!("{}.meta", blob_key(&id))]
    );
}

async fn raw_body_upload_works_on_both_upload_paths(backend: Backend) {
    let server = TestServer::on(backend).await;
    for (path, bytes) in [("/", png(10, 10)), ("/images/", png(12, 10))] {
        let response = server.post_raw(path, "image/png", bytes.clone()).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["id"], sha1_hex(&bytes));
        assert_eq!(body["content_type"], "image/png");
        assert_eq!(
            server
                .read_object(&blob_key(&sha1_hex(&bytes)))
                .await
                .unwrap(),
            bytes
        );
    }
}

/// Upload buffers are kept and handed to later uploads (`progimage::buffers`): a
/// smaller upload after a larger one lands in the larger one's memory, and must store
/// its own bytes and nothing of the earlier ones.
async fn uploads_in_reused_buffers_store_exactly_their_own_bytes(backend: Backend) {
    let server = TestServer::on(backend).await;
    for (width, height) in [(400, 400), (300, 300), (320, 300), (500, 420)] {
        let bytes = noise_png(width, height);
        assert!(bytes.len() > 256 * 1024, "large enough to be pooled");
        let response = server.post_raw("/", "image/png", bytes.clone()).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let id = sha1_hex(&bytes);
        assert_eq!(
            response.json::<serde_json::Value>().await.unwrap()["id"],
            id
        );
        assert_eq!(server.read_object(&blob_key(&id)).await.unwrap(), bytes);
        let original = server.get_bytes(&format!("/images/{id}/")).await;
        assert_eq!(original, bytes, "{width}x{height}");
    }
}

/// Originals of 1 MiB or more reach a directory store with `O_DIRECT` (see
/// `store::direct`), whether sent raw or in a form: whole on disk, and not in the page
/// cache, where a transform, written the ordinary way, is.
#[tokio::test]
async fn large_originals_are_written_to_a_directory_around_the_page_cache() {
    let (server, dir) = server_with_dir(Backend::Filesystem).await;
    let root = dir.unwrap();
    let mut id = String::new();
    for (width, height, as_form) in [(700, 600, false), (1000, 900, false), (900, 700, true)] {
        let bytes = noise_png(width, height);
        assert!(bytes.len() > 1 << 20, "large enough to be written directly");
        let response = if as_form {
            let file = reqwest::multipart::Part::bytes(bytes.clone()).file_name("noise.png");
            let form = reqwest::multipart::Form::new().part("image", file);
            server.post_form("/", form).await
        } else {
            server.post_raw("/", "image/png", bytes.clone()).await
        };
        assert_eq!(response.status(), StatusCode::CREATED);
        id = sha1_hex(&bytes);
        let original = root.path().join(blob_key(&id));
        let cached = pages_in_page_cache(&original);
        assert!(
            cached <= 1,
            "{cached} pages of the original in the page cache (form: {as_form})"
        );
        assert_eq!(std::fs::read(&original).unwrap(), bytes, "{width}x{height}");
    }
    let thumbnail = server.get(&format!("/images/{id}/thumbnail/")).await;
    assert_eq!(thumbnail.status(), StatusCode::OK);
    let derived = files_on_disk(root.path())
        .into_iter()
        .find(|key| key.starts_with(&format!("{}.", blob_key(&id))) && !key.ends_with(".meta"))
        .expect("the thumbnail is stored");
    let path = root.path().join(derived);
    let pages = std::fs::metadata(&path)
        .unwrap()
        .len()
        .div_ceil(page_size());
    assert_eq!(pages_in_page_cache(&path) as u64, pages);
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

/// How many of the file's pages are in the page cache (`mincore` of a mapping of it,
/// which does not read it).
fn pages_in_page_cache(path: &Path) -> usize {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    let mut resident = vec![0u8; len.div_ceil(page_size() as usize)];
    // SAFETY: a read-only shared mapping of a file we hold open, of its length,
    // unmapped before return; mincore writes one byte a page into `resident`.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        assert_eq!(libc::mincore(map, len, resident.as_mut_ptr()), 0);
        libc::munmap(map, len);
    }
    resident.iter().filter(|&&page| page & 1 == 1).count()
}

async fn duplicate_upload_is_200_with_the_same_answer_and_writes_nothing(backend: Backend) {
    let (server, dir) = server_with_dir(backend).await;
    let bytes = jpeg(64, 48);
    let id = sha1_hex(&bytes);
    let first = server
        .client
        .post(server.url("/"))
        .multipart(Form::new().part("image", Part::bytes(bytes.clone()).file_name("a.jpg")))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_location = first.headers()["location"].clone();
    let first_body: serde_json::Value = first.json().await.unwrap();
    let sidecar_key = format!("{}.meta", blob_key(&id));
    let sidecar_before = server.read_object(&sidecar_key).await.unwrap();
    let files_before = server.stored_files().await;
    assert_eq!(files_before, vec![blob_key(&id), sidecar_key.clone()]);
    // Only a directory shows whether identical bytes were written again.
    let modified = |key: &str| {
        dir.as_ref().map(|dir| {
            std::fs::metadata(dir.path().join(key))
                .unwrap()
                .modified()
                .unwrap()
        })
    };
    let modified_before = (modified(&blob_key(&id)), modified(&sidecar_key));

    let second = server
        .client
        .post(server.url("/"))
        .multipart(Form::new().part("image", Part::bytes(bytes.clone()).file_name("b.jpg")))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(second.headers()["location"], first_location);
    let second_body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(second_body, first_body);
    assert_eq!(
        server.read_object(&sidecar_key).await.unwrap(),
        sidecar_before,
        "the sidecar still names a.jpg"
    );
    assert_eq!(server.read_object(&blob_key(&id)).await.unwrap(), bytes);
    assert_eq!(server.stored_files().await, files_before);
    assert_eq!(
        (modified(&blob_key(&id)), modified(&sidecar_key)),
        modified_before
    );
}

async fn a_form_without_the_image_field_is_400_naming_it(backend: Backend) {
    let server = TestServer::on(backend).await;
    let form = Form::new().part("imageX", Part::bytes(jpeg(8, 8)).file_name("a.jpg"));
    let response = server.post_form("/", form).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_image_field");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'image'"),
        "{body}"
    );
    assert!(server.stored_files().await.is_empty());
}

async fn location_follows_forwarded_headers_or_the_public_url(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = jpeg(8, 8);
    let id = sha1_hex(&bytes);
    let response = server
        .client
        .post(server.url("/"))
        .header("content-type", "image/jpeg")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "img.example.com")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["location"],
        format!("https://img.example.com/images/{id}/").as_str()
    );

    let configured = TestServer::on_with(backend, |s| {
        s.public_url = "https://cdn.example.org/".into()
    })
    .await;
    let response = configured.post_raw("/", "image/jpeg", bytes).await;
    assert_eq!(
        response.headers()["location"],
        format!("https://cdn.example.org/images/{id}/").as_str()
    );
}

async fn concurrent_identical_uploads_leave_one_blob_and_one_sidecar(backend: Backend) {
    let (server, dir) = server_with_dir(backend).await;
    let bytes = jpeg(300, 200);
    let id = sha1_hex(&bytes);
    let uploads = (0..8).map(|_| {
        let request = server
            .client
            .post(server.url("/"))
            .header("content-type", "image/jpeg")
            .body(bytes.clone());
        async move { request.send().await.unwrap() }
    });
    let responses = futures::future::join_all(uploads).await;
    let created = responses
        .iter()
        .filter(|r| r.status() == StatusCode::CREATED)
        .count();
    assert!(responses.iter().all(|r| r.status().is_success()));
    assert_eq!(created, 1, "exactly one upload creates the blob");
    let expected = vec![blob_key(&id), format!("{}.meta", blob_key(&id))];
    assert_eq!(server.stored_files().await, expected);
    if let Some(dir) = &dir {
        // Nor any staging file a losing writer left behind, which listing hides.
        assert_eq!(files_on_disk(dir.path()), expected);
    }
}
