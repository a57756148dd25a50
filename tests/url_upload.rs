//! Upload by URL: `POST /` with `{"url": ...}`, against a real origin server on
//! loopback, which the tests open explicitly (`fetch.allow_networks`); with the
//! default settings loopback and other private addresses are refused.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::on_every_store;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

on_every_store!(a_fetched_image_is_stored_like_an_upload);

/// A tiny HTTP/1.1 origin written by hand, so that it can misbehave on purpose.
struct Origin {
    base: String,
    connections: Arc<AtomicUsize>,
}

impl Origin {
    async fn start(ip: &str) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    respond(&mut stream, &path).await;
                });
            }
        });
        Self { base, connections }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// The image every origin serves at `/photo.png`.
fn photo() -> Vec<u8> {
    png(33, 21)
}

async fn respond(stream: &mut tokio::net::TcpStream, path: &str) {
    let head = |status: &str, headers: &str| {
        format!("HTTP/1.1 {status}\r\nconnection: close\r\n{headers}\r\n")
    };
    let reply = |status: &str, content_type: &str, body: Vec<u8>| {
        let mut bytes = head(
            status,
            &format!(
                "content-type: {content_type}\r\ncontent-length: {}\r\n",
                body.len()
            ),
        )
        .into_bytes();
        bytes.extend(body);
        bytes
    };
    let bytes = if path == "/photo.png" {
        reply("200 OK", "image/png", photo())
    } else if let Some(hops) = path.strip_prefix("/hops/") {
        // /hops/N redirects N times, then lands on the photo.
        let hops: u32 = hops.parse().unwrap();
        let next = if hops == 0 {
            "/photo.png".to_string()
        } else {
            format!("/hops/{}", hops - 1)
        };
        head(
            "302 Found",
            &format!("location: {next}\r\ncontent-length: 0\r\n"),
        )
        .into_bytes()
    } else if let Some(target) = path.strip_prefix("/redirect-to/") {
        let target = percent_encoding::percent_decode_str(target)
            .decode_utf8_lossy()
            .to_string();
        head(
            "302 Found",
            &format!("location: {target}\r\ncontent-length: 0\r\n"),
        )
        .into_bytes()
    } else if path == "/declared-huge" {
        head(
            "200 OK",
            "content-type: image/png\r\ncontent-length: 900000000\r\n",
        )
        .into_bytes()
    } else if path == "/endless" {
        // No length: a stream that goes on past any limit.
        let _ = stream
            .write_all(head("200 OK", "content-type: image/png\r\n").as_bytes())
            .await;
        let chunk = vec![0u8; 64 * 1024];
        while stream.write_all(&chunk).await.is_ok() {}
        return;
    } else if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(5)).await;
        reply("200 OK", "image/png", photo())
    } else if path == "/text" {
        reply("200 OK", "text/html", b"<html>not an image</html>".to_vec())
    } else if path == "/truncated.png" {
        let photo = photo();
        reply("200 OK", "image/png", photo[..photo.len() / 2].to_vec())
    } else {
        reply("404 Not Found", "text/plain", b"no".to_vec())
    };
    let _ = stream.write_all(&bytes).await;
}

/// A server that may fetch from loopback, with small limits to hit.
async fn server_open_to_loopback(backend: Backend) -> TestServer {
    TestServer::on_with(backend, |settings| {
        settings.fetch.allow_networks = vec!["127.0.0.0/8".into()];
        settings.fetch.timeout_secs = 1;
        settings.limits.max_upload_bytes = 1024 * 1024;
    })
    .await
}

async fn fetch(server: &TestServer, body: serde_json::Value) -> reqwest::Response {
    server
        .client
        .post(server.url("/"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn status_and_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

async fn a_fetched_image_is_stored_like_an_upload(backend: Backend) {
    let origin = Origin::start("127.0.0.1").await;
    let server = server_open_to_loopback(backend).await;
    let response = fetch(
        &server,
        json!({"url": origin.url("/hops/2"), "name": "from afar"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let id = sha1_hex(&photo());
    assert_eq!(
        response.headers()["location"],
        server.url(&format!("/images/{id}/")).as_str()
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["file_name"], "photo.png", "named after the final URL");
    assert_eq!(
        (body["width"].as_u64(), body["height"].as_u64()),
        (Some(33), Some(21))
    );
    assert_eq!(server.read_object(&blob_key(&id)).await.unwrap(), photo());
    let meta = server.get_json(&format!("/images/{id}/meta/")).await;
    assert_eq!(meta["name"], "from afar");
}

#[tokio::test]
async fn private_and_reserved_addresses_are_refused_by_default() {
    let origin = Origin::start("127.0.0.1").await;
    let server = TestServer::on(Backend::Memory).await;
    let port = origin.base.rsplit(':').next().unwrap().to_string();
    for url in [
        origin.url("/photo.png"),
        format!("http://localhost:{port}/photo.png"),
        format!("http://[::1]:{port}/photo.png"),
        format!("http://0.0.0.0:{port}/photo.png"),
        format!("http://[::ffff:127.0.0.1]:{port}/photo.png"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/photo.png".to_string(),
        "file:///etc/passwd".to_string(),
        "ftp://example.com/photo.png".to_string(),
    ] {
        let (status, code) = status_and_code(fetch(&server, json!({ "url": url })).await).await;
        assert_eq!((status, code.as_str()), (400, "url_not_allowed"), "{url}");
    }
    assert_eq!(origin.connections(), 0, "no connection was made");
    assert!(server.stored_files().await.is_empty());
}

#[tokio::test]
async fn a_redirect_into_a_refused_network_is_not_followed() {
    // The origin on 127.0.0.2 is allowed; its redirect to 127.0.0.1 is not.
    let allowed = Origin::start("127.0.0.2").await;
    let refused = Origin::start("127.0.0.1").await;
    let server = TestServer::on_with(Backend::Memory, |settings| {
        settings.fetch.allow_networks = vec!["127.0.0.2/32".into()];
    })
    .await;
    let target: String = percent_encoding::utf8_percent_encode(
        &refused.url("/photo.png"),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string();
    let url = allowed.url(&format!("/redirect-to/{target}"));
    let (status, code) = status_and_code(fetch(&server, json!({ "url": url })).await).await;
    assert_eq!((status, code.as_str()), (400, "url_not_allowed"));
    assert_eq!(allowed.connections(), 1);
    assert_eq!(refused.connections(), 0);
    // The allowed origin itself works.
    let direct = fetch(&server, json!({"url": allowed.url("/photo.png")})).await;
    assert_eq!(direct.status(), 201);
}

#[tokio::test]
async fn bad_urls_and_misbehaving_origins_get_clear_errors() {
    let origin = Origin::start("127.0.0.1").await;
    let server = server_open_to_loopback(Backend::Memory).await;
    for (body, expected) in [
        (json!({"url": "not a url"}), (400, "invalid_url")),
        (
            json!({"link": origin.url("/photo.png")}),
            (400, "invalid_json"),
        ),
        (json!({"url": origin.url("/hops/4")}), (422, "fetch_failed")),
        (
            json!({"url": origin.url("/missing")}),
            (422, "fetch_failed"),
        ),
        (
            json!({"url": origin.url("/declared-huge")}),
            (413, "max_upload_bytes"),
        ),
        (
            json!({"url": origin.url("/endless")}),
            (413, "max_upload_bytes"),
        ),
        (json!({"url": origin.url("/slow")}), (422, "fetch_timeout")),
        (
            json!({"url": origin.url("/text")}),
            (415, "unsupported_media_type"),
        ),
        (
            json!({"url": origin.url("/truncated.png")}),
            (422, "undecodable_image"),
        ),
    ] {
        let started = std::time::Instant::now();
        let (status, code) = status_and_code(fetch(&server, body.clone()).await).await;
        assert_eq!((status, code.as_str()), expected, "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{body} took {:?}",
            started.elapsed()
        );
    }
    assert!(server.stored_files().await.is_empty());
}
