//! Faults survived: the store going away and coming back, a process killed in the
//! middle of uploads, and a graceful stop on SIGTERM.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::s3::{S3Proxy, S3Server};
use common::{
    assert_consistent, assert_retry_later, derived_marker, noise_png, on_shared_stores, sha1_hex,
    slow_source, slow_transform, stored_keys, Backend, SharedStore, TestServer,
};
use futures::future::join_all;
use futures::StreamExt;

on_shared_stores!(
    a_killed_process_loses_nothing_it_acknowledged,
    a_crashed_holders_lease_delays_others_only_until_it_expires,
    a_computation_cut_off_by_shutdown_gives_up_its_lease,
);

#[tokio::test]
async fn an_unreachable_s3_store_is_a_503_and_the_service_recovers() {
    let s3 = common::s3::shared();
    let mut proxy = S3Proxy::start(s3.addr).await;
    let server = TestServer::on_with(Backend::S3, |settings| {
        settings.s3 = s3.settings_via(proxy.addr);
        settings.s3.retry_timeout_secs = 2;
    })
    .await;
    let stored = noise_png(40, 30);
    let id = server.upload_id(&stored).await;
    assert_eq!(server.get("/readyz").await.status(), 200);

    proxy.cut();
    let started = Instant::now();
    let response = server.get(&format!("/images/{id}/")).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a 503 must come within the retry timeout, took {:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), 503);
    let message = assert_retry_later(response, "store_unavailable").await;
    // The cause names the store's endpoint and keys: the log has it, the client not.
    let port = proxy.addr.port().to_string();
    assert!(
        !message.contains(&port) && !message.contains(&id) && !message.contains("http"),
        "{message}"
    );

    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap()["status"],
        "unavailable"
    );
    assert_eq!(
        server.get("/healthz").await.status(),
        200,
        "the process is alive"
    );
    let refused = noise_png(41, 30);
    let upload = server.post_raw("/", "image/png", refused.clone()).await;
    assert_eq!(upload.status(), 503);
    assert_eq!(
        server
            .get(&format!("/images/{id}/thumbnail/"))
            .await
            .status(),
        503
    );

    // The store comes back where it was: no restart of progimage needed.
    proxy.restore().await;
    assert_eq!(server.get("/readyz").await.status(), 200);
    let original = server.get(&format!("/images/{id}/")).await;
    assert_eq!(original.status(), 200);
    assert_eq!(original.bytes().await.unwrap(), stored);
    assert_eq!(
        server
            .get(&format!("/images/{id}/thumbnail/"))
            .await
            .status(),
        200
    );
    // The refused upload left nothing behind; sent again, it is stored.
    assert_eq!(assert_consistent(&server.store).await, vec![id]);
    assert_eq!(
        server.post_raw("/", "image/png", refused).await.status(),
        201
    );
}

#[tokio::test]
async fn a_hung_s3_store_is_a_503_within_the_timeouts_and_the_service_recovers() {
    let s3 = S3Server::start(); // its own: the others keep working meanwhile
    let server = TestServer::on_with(Backend::S3, |settings| {
        settings.s3 = s3.settings();
        settings.s3.request_timeout_secs = 1;
        settings.s3.max_retries = 1;
        settings.s3.retry_timeout_secs = 1;
    })
    .await;
    let stored = noise_png(40, 30);
    let id = server.upload_id(&stored).await;

    s3.signal(libc::SIGSTOP);
    let started = Instant::now();
    let response = server.get(&format!("/images/{id}/")).await;
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "a hung store must become a 503 after the request timeout and one retry, took {took:?}"
    );
    assert_eq!(server.get("/readyz").await.status(), 503);

    s3.signal(libc::SIGCONT);
    assert_eq!(server.get("/readyz").await.status(), 200);
    let original = server.get(&format!("/images/{id}/")).await;
    assert_eq!(original.bytes().await.unwrap(), stored);
    assert_eq!(assert_consistent(&server.store).await, vec![id]);
}

/// Uploads distinct images through a process that is SIGKILLed while some are still
/// being sent; a restarted process must serve every upload that got a 2xx, and the
/// store must hold no partial blob and no sidecar without its blob.
async fn a_killed_process_loses_nothing_it_acknowledged(backend: Backend) {
    let shared = SharedStore::new(backend);
    let instance = shared.spawn_instance();
    let client = reqwest::Client::new();
    let images: Vec<Vec<u8>> = (0..24).map(|n| noise_png(300 + n, 200)).collect();
    let answered = AtomicUsize::new(0);
    let uploads = images.iter().enumerate().map(|(n, bytes)| {
        let client = client.clone();
        let url = instance.url("/");
        let bytes = bytes.clone();
        let answered = &answered;
        async move {
            // Every other upload trickles in for seconds, so it is mid-body at the kill.
            let body = if n % 2 == 0 {
                reqwest::Body::from(bytes.clone())
            } else {
                slow_body(bytes.clone(), Duration::from_millis(3000 + 50 * n as u64))
            };
            let response = client
                .post(url)
                .header("content-type", "image/png")
                .body(body)
                .send()
                .await;
            match response {
                Ok(response) if response.status().is_success() => {
                    answered.fetch_add(1, Ordering::SeqCst);
                    Some(sha1_hex(&bytes))
                }
                _ => None,
            }
        }
    });
    // The kill lands once a few uploads are acknowledged, however fast the machine.
    let killer = async {
        let started = Instant::now();
        while answered.load(Ordering::SeqCst) < 4 && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        instance.signal(libc::SIGKILL);
    };
    let (acknowledged, ()) = tokio::join!(join_all(uploads), killer);
    let acknowledged: Vec<String> = acknowledged.into_iter().flatten().collect();
    assert!(
        !acknowledged.is_empty() && acknowledged.len() < images.len(),
        "the kill must land mid-run: {} of {} acknowledged",
        acknowledged.len(),
        images.len()
    );
    drop(instance);

    let restarted = shared.spawn_instance();
    for id in &acknowledged {
        let response = client
            .get(restarted.url(&format!("/images/{id}/")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "acknowledged {id} is lost");
        assert_eq!(&sha1_hex(&response.bytes().await.unwrap()), id);
    }
    let blobs = assert_consistent(&shared.store).await;
    for id in &acknowledged {
        assert!(blobs.contains(id));
    }
}

/// A lease left by an instance that died while computing: the next request waits for
/// it to expire, then computes the transform itself and clears the lease.
async fn a_crashed_holders_lease_delays_others_only_until_it_expires(backend: Backend) {
    // No hot cache: the server must see the store as a fresh instance would.
    let server = TestServer::on_with(backend, |s| s.hot_cache_bytes = 0).await;
    let id = server.upload_id(&noise_png(64, 64)).await;
    let path = format!("/images/{id}/thumbnail/");
    assert_eq!(server.get(&path).await.headers()["x-cache"], "MISS");
    let files = server.stored_files().await;
    let derived = files
        .iter()
        .find(|key| key.contains(&derived_marker()))
        .unwrap();
    server.store.delete(&derived.as_str().into()).await.unwrap();
    let lease = format!("leases/{derived}");
    let expires_at = chrono::Utc::now() + Duration::from_millis(1500);
    let body = serde_json::json!({"expires_at": expires_at, "holder": "a crashed instance"});
    server
        .write_object(&lease, body.to_string().as_bytes())
        .await;

    let started = Instant::now();
    let response = server.get(&path).await;
    let waited = started.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-cache"], "MISS");
    assert!(
        waited >= Duration::from_millis(1200) && waited < Duration::from_secs(10),
        "waited {waited:?} for a lease expiring after 1.5 s"
    );
    assert_eq!(
        server.stored_files().await,
        files,
        "recomputed, lease cleared"
    );
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits_0() {
    let shared = SharedStore::new(Backend::Filesystem);
    let mut instance = shared.spawn_instance();
    let client = reqwest::Client::new();
    let bytes = noise_png(120, 80);
    let slow_upload = client
        .post(instance.url("/"))
        .header("content-type", "image/png")
        .body(slow_body(bytes.clone(), Duration::from_millis(1500)))
        .send();
    let terminate = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        instance.signal(libc::SIGTERM);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // New connections are refused while the slow upload is still arriving.
        let late = reqwest::Client::new()
            .get(instance.url("/healthz"))
            .send()
            .await;
        assert!(late.is_err(), "a new request was accepted after SIGTERM");
    };
    let (response, ()) = tokio::join!(slow_upload, terminate);
    let response = response.expect("the in-flight upload is answered");
    assert_eq!(response.status(), 201);
    let status = instance
        .wait(Duration::from_secs(10))
        .expect("the process exits");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        assert_consistent(&shared.store).await,
        vec![sha1_hex(&bytes)]
    );
}

/// A stop that gives up on a computation still running (no grace here) deletes the
/// lease it held before the process exits, so that another instance asking for that
/// transform computes it at once instead of waiting out the lease's 60 s.
async fn a_computation_cut_off_by_shutdown_gives_up_its_lease(backend: Backend) {
    let shared = SharedStore::new(backend);
    let settings = tempfile::tempdir().unwrap();
    let toml = "transform_lease_after_ms = 0\nshutdown_grace_secs = 0\n";
    let mut instance = shared.spawn_instance_with(&settings, toml);
    let client = reqwest::Client::new();
    let id = instance.upload_id(&client, slow_source()).await;
    let leases = || async {
        let keys = stored_keys(&shared.store).await;
        keys.into_iter()
            .filter(|key| key.starts_with("leases/"))
            .collect::<Vec<_>>()
    };
    let cut_off = tokio::spawn(client.get(instance.url(&slow_transform(&id, 3))).send());
    let started = Instant::now();
    while leases().await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no lease was taken"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    instance.signal(libc::SIGTERM);
    let status = instance
        .wait(Duration::from_secs(20))
        .expect("the process exits");
    assert_eq!(status.code(), Some(0));
    assert!(
        cut_off.await.unwrap().is_err(),
        "the computation was cut off, not answered"
    );
    assert_eq!(leases().await, Vec::<String>::new(), "the lease is gone");
}

/// A request body sent in 16 pieces spread over `duration`.
fn slow_body(bytes: Vec<u8>, duration: Duration) -> reqwest::Body {
    let pieces = 16;
    let step = bytes.len().div_ceil(pieces);
    let bytes = Bytes::from(bytes);
    let chunks = (0..pieces)
        .map(move |n| bytes.slice((n * step).min(bytes.len())..((n + 1) * step).min(bytes.len())));
    let pause = duration / pieces as u32;
    reqwest::Body::wrap_stream(futures::stream::iter(chunks).then(move |chunk| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::io::Error>(chunk)
    }))
}
