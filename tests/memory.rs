//! Bounded memory: uploads and transforms reserve what they will hold from the memory
//! budget before holding it; beyond the budget they wait, and beyond the queue they
//! get 429, so no request is lost and nothing piles up.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures::future::join_all;
use futures::StreamExt;

/// A raw upload whose body trickles in over about `over`, so concurrent uploads
/// overlap for certain.
async fn slow_upload(server: &TestServer, body: Vec<u8>, over: Duration) -> reqwest::Response {
    let pieces: Vec<Bytes> = body
        .chunks(body.len() / 4 + 1)
        .map(Bytes::copy_from_slice)
        .collect();
    let pause = over / pieces.len() as u32;
    let stream = futures::stream::iter(pieces).then(move |piece| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::io::Error>(piece)
    });
    server
        .client
        .post(server.url("/"))
        .header("content-type", "image/bmp")
        .header("content-length", body.len())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap()
}

/// A BMP of about `bytes` bytes, distinct for each `seed`.
fn bmp(bytes: usize, seed: u8) -> Vec<u8> {
    let side = ((bytes / 3) as f64).sqrt() as u32;
    let mut image = image::RgbImage::new(side, side);
    image.get_pixel_mut(0, 0).0 = [seed, seed, seed];
    encode(
        &image::DynamicImage::ImageRgb8(image),
        image::ImageFormat::Bmp,
    )
}

#[tokio::test]
async fn uploads_wait_for_the_memory_budget_and_overflow_with_429() {
    // Room for two 3 MB uploads at once, and two more waiting.
    let server = TestServer::on_with(Backend::Memory, |settings| {
        settings.limits.memory_budget_bytes = 7 * 1024 * 1024;
        settings.limits.max_queued_transforms = 2;
    })
    .await;
    let bodies: Vec<Vec<u8>> = (0..8).map(|seed| bmp(3 << 20, seed)).collect();
    let uploads = join_all(
        bodies
            .iter()
            .map(|body| slow_upload(&server, body.clone(), Duration::from_millis(400))),
    );
    // Meanwhile the gauges show two uploads holding the budget and two waiting.
    let gauges = async {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            let metrics = server.get("/metrics").await.text().await.unwrap();
            let (reserved, waiting) = (
                sample(&metrics, "progimage_memory_reserved_bytes").unwrap(),
                sample(&metrics, "progimage_memory_waiting").unwrap(),
            );
            if waiting == 2.0 {
                return reserved;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("never two uploads waiting for the budget");
    };
    let (responses, reserved) = tokio::join!(uploads, gauges);
    assert!(reserved >= 6.0 * 1024.0 * 1024.0, "{reserved}");
    let mut created = Vec::new();
    let mut refused = 0;
    for (body, response) in bodies.iter().zip(responses) {
        match response.status().as_u16() {
            201 => created.push(sha1_hex(body)),
            429 => {
                refused += 1;
                assert_retry_later(response, "too_many_requests").await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        created.len() >= 4,
        "two ran and two waited: {}",
        created.len()
    );
    assert!(refused >= 1, "the queue overflowed");
    let blobs: Vec<String> = server
        .stored_files()
        .await
        .into_iter()
        .filter(|key| !key.contains('.'))
        .collect();
    created.sort();
    let mut stored: Vec<String> = blobs
        .iter()
        .map(|key| key.rsplit('/').next().unwrap().to_string())
        .collect();
    stored.sort();
    assert_eq!(stored, created, "every 201 is stored, no 429 is");
    // The budget was given back: the refused ones go through now, one at a time.
    for body in &bodies {
        let response = server.post_raw("/", "image/bmp", body.clone()).await;
        assert!(response.status().is_success(), "{}", response.status());
    }
}

#[tokio::test]
async fn an_upload_longer_than_the_whole_budget_runs_alone() {
    let server = TestServer::on_with(Backend::Memory, |settings| {
        settings.limits.memory_budget_bytes = 1024 * 1024;
    })
    .await;
    let body = bmp(3 << 20, 1);
    let response = server.post_raw("/", "image/bmp", body.clone()).await;
    assert_eq!(response.status(), 201);
    // Its transform needs far more than the budget too: it also runs, alone.
    let id = sha1_hex(&body);
    let thumbnail = server.get_image(&format!("/images/{id}/thumbnail/")).await;
    assert!(thumbnail.width() > 0);
}

/// The peak resident memory of a process, from /proc.
fn peak_rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A smooth 12 MP JPEG (4000x3000), distinct per `seed`.
fn twelve_megapixels(seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(4000, 3000, |x, y| {
        image::Rgb([(x / 16) as u8, (y / 12) as u8, seed])
    });
    encode(
        &image::DynamicImage::ImageRgb8(image),
        image::ImageFormat::Jpeg,
    )
}

/// The load: 64 uncached transforms of 12 MP photos and 64 uploads of 20 MB
/// at once, against a real `progimage serve` with the default budget (256 MiB). Every
/// request is answered 2xx or 429, and the process's peak RSS stays under 512 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_big_jobs_stays_within_the_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let instance = common::instance::Instance::spawn(dir.path().to_str().unwrap(), &[]);
    let client = reqwest::Client::new();
    let mut photos = Vec::new();
    for seed in 0..4 {
        let response = instance.upload_png(&client, twelve_megapixels(seed)).await;
        assert!(response.status().is_success());
        let body: serde_json::Value = response.json().await.unwrap();
        photos.push(body["id"].as_str().unwrap().to_string());
    }
    let big = bmp(20 << 20, 0);
    let transforms = (0..64).map(|n| {
        let url = instance.url(&format!("/images/{}/resize/?w={}", photos[n % 4], 3000 + n));
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    });
    let uploads = (0..64u8).map(|n| {
        let mut body = big.clone();
        let last = body.len() - 1;
        body[last] = n;
        let (client, url) = (client.clone(), instance.url("/"));
        async move {
            client
                .post(url)
                .header("content-type", "image/bmp")
                .body(body)
                .send()
                .await
                .map_or(0, |r| r.status().as_u16())
        }
    });
    let (transformed, uploaded) = futures::join!(join_all(transforms), join_all(uploads));
    for status in transformed.iter().chain(&uploaded) {
        assert!(
            matches!(status, 200 | 201 | 429),
            "{transformed:?} {uploaded:?}"
        );
    }
    assert!(transformed.contains(&200) && uploaded.contains(&201));
    let peak = peak_rss_bytes(instance.pid());
    eprintln!(
        "peak RSS {} MiB; transforms {} ok / {} refused; uploads {} ok / {} refused",
        peak >> 20,
        transformed.iter().filter(|s| **s == 200).count(),
        transformed.iter().filter(|s| **s == 429).count(),
        uploaded.iter().filter(|s| **s == 201).count(),
        uploaded.iter().filter(|s| **s == 429).count(),
    );
    assert!(peak < 512 << 20, "peak RSS {} MiB", peak >> 20);
}
