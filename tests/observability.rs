//! What an operator sees: request ids, `/metrics` and its gauges, one JSON log line
//! per request, and back-pressure (429) when the transform queue is full.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::instance::Instance;
use common::*;
use futures::future::join_all;

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let server = TestServer::on(Backend::Memory).await;
    let echoed = server
        .client
        .get(server.url("/healthz"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-abc-123");
    let mut generated = Vec::new();
    for _ in 0..2 {
        let response = server.get("/images/0000/").await;
        assert_eq!(response.status(), 400, "errors carry an id too");
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(id.len(), 16, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        generated.push(id);
    }
    assert_ne!(generated[0], generated[1]);
    let junk = server
        .client
        .get(server.url("/healthz"))
        .header("x-request-id", "x".repeat(300))
        .send()
        .await
        .unwrap();
    assert_eq!(
        junk.headers()["x-request-id"].len(),
        16,
        "an overlong id is replaced"
    );
}

#[tokio::test]
async fn metrics_count_requests_cache_results_transforms_bytes_and_rejections() {
    // However slow this machine, the thumbnail below finishes before it takes a lease.
    let server = TestServer::on_with(Backend::Memory, |settings| {
        settings.transform_lease_after_ms = 10_000;
    })
    .await;
    let bytes = png(64, 48);
    let id = server.upload_id(&bytes).await;
    for _ in 0..2 {
        let response = server.get(&format!("/images/{id}/thumbnail/?w=10")).await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        server
            .get(&format!("/images/{}/", "0".repeat(40)))
            .await
            .status(),
        404
    );

    let response = server.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = response.text().await.unwrap();
    let expect = |name: &str, value: f64| {
        assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
    };
    expect(
        "progimage_http_requests_total{route=\"upload\",method=\"POST\",status=\"201\"}",
        1.0,
    );
    expect(
        "progimage_http_requests_total{route=\"transform\",method=\"GET\",status=\"200\"}",
        2.0,
    );
    expect("progimage_cache_lookups_total{result=\"MISS\"}", 1.0);
    expect("progimage_cache_lookups_total{result=\"HIT\"}", 1.0);
    expect("progimage_transform_leases_total", 0.0);
    expect(
        "progimage_transform_duration_seconds_count{transform=\"thumbnail\"}",
        1.0,
    );
    expect(
        "progimage_rejected_requests_total{reason=\"image_not_found\"}",
        1.0,
    );
    expect(
        "progimage_http_request_duration_seconds_count{route=\"transform\"}",
        2.0,
    );
    expect("progimage_http_requests_in_flight", 1.0);
    // The one thumbnail computed is held in memory, byte for byte.
    let thumbnail = server.get(&format!("/images/{id}/thumbnail/?w=10")).await;
    let held = thumbnail.bytes().await.unwrap().len() as f64;
    expect("progimage_hot_cache_bytes", held);
    expect("progimage_http_received_bytes_total", bytes.len() as f64);
    assert!(sample(&text, "progimage_http_sent_bytes_total").unwrap() > 0.0);
    assert!(text.trim_end().ends_with("# EOF"));
}

#[tokio::test]
async fn a_full_transform_queue_answers_429_with_retry_after() {
    let server = TestServer::on_with(Backend::Memory, |settings| {
        settings.transform_workers = 1;
        settings.limits.max_queued_transforms = 1;
    })
    .await;
    let id = server.upload_id(&noise_png(1500, 1500)).await;
    // Distinct keys, so nothing coalesces: one runs, one waits, the rest are refused.
    let paths: Vec<String> = (1..=8)
        .map(|sigma| format!("/images/{id}/blur/?sigma={sigma}"))
        .collect();
    let responses = join_all(paths.iter().map(|path| server.get(path))).await;
    let mut refused = 0;
    let mut served = 0;
    for response in responses {
        match response.status().as_u16() {
            200 => served += 1,
            429 => {
                refused += 1;
                assert_retry_later(response, "too_many_requests").await;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        served >= 2,
        "the running and the queued job finish ({served})"
    );
    assert!(refused >= 1, "the queue overflowed ({refused})");
    let stored = server
        .stored_files()
        .await
        .iter()
        .filter(|key| key.contains(&derived_marker()))
        .count();
    assert_eq!(
        stored, served,
        "every served transform was cached, no refused one"
    );
    // Once the queue drains, the refused requests succeed.
    assert_eq!(
        server
            .get(&format!("/images/{id}/blur/?sigma=9"))
            .await
            .status(),
        200
    );
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        sample(
            &metrics,
            "progimage_rejected_requests_total{reason=\"too_many_requests\"}"
        ),
        Some(refused as f64)
    );
}

/// The gauges an operator tunes the workers, the queue and the memory budget by: one
/// slow transform runs, a second waits for the one worker, both hold memory; when
/// they are done, nothing is running, waiting or reserved.
#[tokio::test]
async fn gauges_show_the_transforms_running_waiting_and_their_memory() {
    let server = TestServer::on_with(Backend::Memory, |settings| {
        settings.transform_workers = 1;
    })
    .await;
    let id = server.upload_id(&slow_source()).await;
    let slow = [2, 3].map(|sigma| {
        let url = server.url(&slow_transform(&id, sigma));
        let client = server.client.clone();
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    });
    let gauges = |metrics: &str| {
        [
            "progimage_transforms_running",
            "progimage_transforms_waiting",
            "progimage_memory_reserved_bytes",
        ]
        .map(|name| sample(metrics, name).unwrap_or_else(|| panic!("{name}: {metrics}")))
    };
    let started = std::time::Instant::now();
    let [running, waiting, reserved] = loop {
        let metrics = server.get("/metrics").await.text().await.unwrap();
        let now = gauges(&metrics);
        if now[..2] == [1.0, 1.0] {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20) && !slow.iter().all(|t| t.is_finished()),
            "never one running and one waiting: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!((running, waiting), (1.0, 1.0));
    // Each holds at least its decoded RGBA pixels.
    assert!(reserved >= 2.0 * 2400.0 * 1800.0 * 4.0, "{reserved}");
    for task in slow {
        assert_eq!(task.await.unwrap(), 200);
    }
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert_eq!(gauges(&metrics), [0.0, 0.0, 0.0]);
}

#[tokio::test]
async fn json_logs_have_one_line_per_request_with_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_progimage"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = mpsc::channel::<serde_json::Value>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let parsed = serde_json::from_str(&line)
                .unwrap_or_else(|err| panic!("a log line is not JSON ({err}): {line}"));
            if lines.send(parsed).is_err() {
                break;
            }
        }
    });
    let next = |what: &str, pred: &dyn Fn(&serde_json::Value) -> bool| loop {
        let line = received
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no log line {what}"));
        if pred(&line) {
            return line;
        }
    };
    let started = next("with the address", &|line| {
        line["fields"]["listen"].is_string()
    });
    let base = format!("http://{}", started["fields"]["listen"].as_str().unwrap());
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{base}/"))
        .header("content-type", "image/png")
        .header("x-request-id", "upload-7")
        .body(png(20, 20))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let logged = next("for the upload", &|line| {
        line["fields"]["message"] == "request" && line["span"]["id"] == "upload-7"
    });
    let fields = &logged["fields"];
    assert_eq!(fields["method"], "POST");
    assert_eq!(fields["route"], "upload");
    assert_eq!(fields["status"], 201);
    assert!(fields["ms"].as_f64().unwrap() >= 0.0);
    assert!(fields["bytes"].as_u64().unwrap() > 0);
    assert_eq!(logged["level"], "INFO");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn request_lines_follow_rust_log_like_any_info_line_of_the_http_module() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("RUST_LOG", "info,progimage::http=warn".to_string())];
    let mut instance = Instance::spawn(dir.path().to_str().unwrap(), &env);
    let response = reqwest::get(instance.url("/healthz")).await.unwrap();
    assert_eq!(response.status(), 200);
    instance.signal(libc::SIGTERM);
    assert!(instance.wait(Duration::from_secs(30)).is_some());
    // Everything written before the exit: the shutdown lines (module `progimage`) but
    // no request line.
    let rest = instance.log_lines();
    assert!(
        rest.iter().any(|line| line.contains("shutting down")),
        "{rest:?}"
    );
    assert!(
        !rest.iter().any(|line| line.contains("request method=")),
        "{rest:?}"
    );
}
