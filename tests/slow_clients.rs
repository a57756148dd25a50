//! Slow and hostile clients cannot hold connections: bodies that stall get 408,
//! headers that stall are cut off, responses nobody reads are dropped, only
//! `max_connections` are served at once, and a client that hangs up while its
//! transform is computed leaves no lease behind. Raw TCP, so the client can misbehave.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server_with_short_timeouts() -> TestServer {
    TestServer::on_with(Backend::Memory, |settings| {
        settings.limits.header_read_timeout_secs = 1;
        settings.limits.body_read_timeout_secs = 1;
        settings.limits.write_timeout_secs = 1;
    })
    .await
}

/// Reads until the peer closes (or resets) the connection; what was read, and how long
/// it took. Gives up after 10 s.
async fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, started.elapsed()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => panic!("the server kept the connection open"),
        }
    }
}

#[tokio::test]
async fn a_body_that_stalls_gets_408_and_nothing_is_stored() {
    let server = server_with_short_timeouts().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head =
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\ncontent-length: 100000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&png(10, 10)[..20]).await.unwrap();
    let (response, took) = read_until_closed(&mut stream).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"body_timeout\""), "{response}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(server.stored_files().await.is_empty());
}

#[tokio::test]
async fn a_body_that_trickles_gets_408_once_the_grace_period_is_over() {
    let server = TestServer::on_with(Backend::Memory, |settings| {
        settings.limits.body_read_timeout_secs = 1;
        settings.limits.min_body_bytes_per_sec = 1000;
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head =
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\ncontent-length: 100000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    // Never silent for the 1 s idle timeout, but far below 1000 bytes a second.
    let body = png(10, 10);
    let trickle = async {
        for byte in body.iter().cycle() {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(4), trickle).await;
    let (response, _) = read_until_closed(&mut stream).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"body_too_slow\""), "{response}");
    assert!(response.contains("1000 bytes a second"), "{response}");
    assert!(server.stored_files().await.is_empty());
}

#[tokio::test]
async fn headers_that_stall_are_cut_off() {
    let server = server_with_short_timeouts().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let (_, took) = read_until_closed(&mut stream).await;
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn a_response_nobody_reads_is_dropped() {
    let server = server_with_short_timeouts().await;
    // Bigger than every socket buffer between here and the server.
    let pixels: Vec<u8> = (0..2600u32 * 2600 * 3)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let image = image::RgbImage::from_raw(2600, 2600, pixels).unwrap();
    let bytes = encode(
        &image::DynamicImage::ImageRgb8(image),
        image::ImageFormat::Bmp,
    );
    let id = server.upload_id(&bytes).await;

    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET /images/{id}/ HTTP/1.1\r\nhost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // Read nothing for a while: the server's writes stall and it gives up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (received, _) = read_until_closed(&mut stream).await;
    assert!(
        received.len() < bytes.len(),
        "the whole {} bytes arrived ({}): the connection was not dropped",
        bytes.len(),
        received.len()
    );
    // The server is fine and serves the same image to a client that reads.
    let whole = server.get_bytes(&format!("/images/{id}/")).await;
    assert_eq!(whole.len(), bytes.len());
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_one() {
    let server = TestServer::on_with(Backend::Memory, |settings| {
        settings.limits.max_connections = 2;
    })
    .await;
    let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut buffer = [0u8; 512];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
        open.push(stream); // kept alive, idle
    }
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buffer = [0u8; 512];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buffer)).await;
    assert!(
        early.is_err(),
        "a third connection was served beyond max_connections"
    );
    drop(open.remove(0));
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buffer))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
}

/// A lease is held while a transform is computed (here taken before computing, as with
/// `transform_lease_after_ms = 0`). When the client hangs up, the request is dropped
/// and so is the computation; its lease must go with it, or the next request for the
/// same transform would wait out the lease's 60 s for a result that never comes.
#[tokio::test]
async fn a_client_that_hangs_up_mid_transform_leaves_no_lease() {
    let server = TestServer::on_with(Backend::Memory, |settings| {
        settings.transform_lease_after_ms = 0;
    })
    .await;
    let id = server.upload_id(&slow_source()).await;
    let path = slow_transform(&id, 2);
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let leases = || async {
        let keys = server.stored_files().await.into_iter();
        keys.filter(|key| key.starts_with("leases/")).count()
    };
    let started = Instant::now();
    while leases().await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no lease taken"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(stream);
    let hung_up = Instant::now();
    while leases().await > 0 {
        assert!(
            hung_up.elapsed() < Duration::from_secs(10),
            "the lease outlived the request that held it"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The abandoned computation stored nothing, and the next request computes anew
    // rather than waiting for it.
    let again = tokio::time::timeout(Duration::from_secs(20), server.get(&path))
        .await
        .expect("the next request waited for the abandoned computation");
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["x-cache"], "MISS");
    let image = image::load_from_memory(&again.bytes().await.unwrap()).unwrap();
    assert_eq!(image.width(), 2300);
    assert_eq!(leases().await, 0);
}
