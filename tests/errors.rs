//! Bad input: every error is a JSON body with the right status and code, never a
//! panic, a hang, an HTML page or a 500.

mod common;

use common::on_every_store;
use common::*;
use image::{DynamicImage, ImageFormat};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

on_every_store!(
    unknown_images_transforms_and_routes_are_404,
    wrong_methods_are_405_with_allow,
    bad_parameters_are_400_naming_the_parameter,
    non_images_are_415,
    truncated_corrupt_and_zero_sized_images_are_422,
    a_jpeg_whose_scan_was_cut_is_422_not_grey,
    images_over_the_pixel_limit_are_413_from_the_header,
    bodies_over_the_upload_limit_are_413,
    a_declared_length_over_the_limit_is_refused_without_reading_the_body,
    malformed_multipart_is_400,
);

async fn unknown_images_transforms_and_routes_are_404(backend: Backend) {
    let server = TestServer::on(backend).await;
    let missing = "0123456789abcdef0123456789abcdef01234567";
    expect_error(
        server.get(&format!("/images/{missing}/")).await,
        StatusCode::NOT_FOUND,
        "image_not_found",
    )
    .await;
    expect_error(
        server.get(&format!("/images/{missing}/meta/")).await,
        StatusCode::NOT_FOUND,
        "image_not_found",
    )
    .await;
    expect_error(
        server.get(&format!("/images/{missing}/thumbnail/")).await,
        StatusCode::NOT_FOUND,
        "image_not_found",
    )
    .await;

    let bytes = jpeg(10, 10);
    let id = sha1_hex(&bytes);
    server.upload(&bytes).await;
    let message = expect_error(
        server.get(&format!("/images/{id}/sepia/")).await,
        StatusCode::NOT_FOUND,
        "unknown_transform",
    )
    .await;
    assert!(
        message.contains("thumbnail"),
        "lists what exists: {message}"
    );
    expect_error(
        server.get(&format!("/images/{id}.exe")).await,
        StatusCode::NOT_FOUND,
        "route_not_found",
    )
    .await;
    expect_error(
        server.get("/no/such/route/here").await,
        StatusCode::NOT_FOUND,
        "route_not_found",
    )
    .await;
    expect_error(
        server.get("/images/not-an-id/").await,
        StatusCode::BAD_REQUEST,
        "invalid_image_id",
    )
    .await;
}

async fn wrong_methods_are_405_with_allow(backend: Backend) {
    let server = TestServer::on(backend).await;
    let id = "0123456789abcdef0123456789abcdef01234567";
    let response = server
        .client
        .put(server.url(&format!("/images/{id}/")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "GET, HEAD, DELETE");
    expect_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    let response = server.client.put(server.url("/")).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "GET, HEAD, POST");
    expect_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    let response = server.get("/on_demand/thumbnail/").await;
    expect_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

async fn bad_parameters_are_400_naming_the_parameter(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = jpeg(10, 10);
    let id = sha1_hex(&bytes);
    server.upload(&bytes).await;
    for (query, code, named) in [
        ("w=0", "invalid_parameter", "'w'"),
        ("w=abc", "invalid_parameter", "'w'"),
        ("w=99999", "invalid_parameter", "'w'"),
        ("w=10&w=20", "invalid_parameter", "'w'"),
        ("colour=red", "unknown_parameter", "'colour'"),
        ("format=exe", "invalid_parameter", "'format'"),
        ("q=0", "invalid_parameter", "'q'"),
        ("q=101", "invalid_parameter", "'q'"),
    ] {
        let message = expect_error(
            server
                .get(&format!("/images/{id}/thumbnail/?{query}"))
                .await,
            StatusCode::BAD_REQUEST,
            code,
        )
        .await;
        assert!(message.contains(named), "{query}: {message}");
    }
    expect_error(
        server.get(&format!("/images/{id}/ascii/?format=png")).await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    // On-demand validates parameters before reading the body.
    let response = server
        .post_raw("/on_demand/thumbnail/?size=-1", "image/jpeg", bytes)
        .await;
    expect_error(response, StatusCode::BAD_REQUEST, "invalid_parameter").await;
}

async fn non_images_are_415(backend: Backend) {
    let server = TestServer::on(backend).await;
    expect_error(
        server
            .post_raw("/", "image/jpeg", b"<html>not an image</html>".to_vec())
            .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let message = expect_error(
        server.post_raw("/", "text/plain", jpeg(8, 8)).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert!(message.contains("multipart/form-data"), "{message}");
    expect_error(
        server
            .post_raw("/on_demand/thumbnail/", "image/png", vec![0; 100])
            .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    expect_error(
        server.post_raw("/", "image/png", Vec::new()).await,
        StatusCode::BAD_REQUEST,
        "empty_body",
    )
    .await;
    assert!(server.stored_files().await.is_empty());
}

async fn truncated_corrupt_and_zero_sized_images_are_422(backend: Backend) {
    let server = TestServer::on(backend).await;
    let whole = jpeg(300, 200);
    for (name, bytes) in [
        ("truncated_jpeg.jpg", fixture("truncated_jpeg.jpg")),
        ("cut generated jpeg", whole[..whole.len() / 2].to_vec()),
        ("broken.png", fixture("broken.png")),
        ("zero_width.gif", fixture("zero_width.gif")),
    ] {
        for path in ["/", "/on_demand/thumbnail/"] {
            let response = server.post_raw(path, "image/jpeg", bytes.clone()).await;
            assert_eq!(
                response.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{name} at {path}"
            );
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "undecodable_image", "{name}: {body}");
        }
    }
    // A JPEG that stops right after its scan, before the EOI marker. A render at 1/8
    // scale skips the walk, as its decoder reads the scan itself: that decoder must
    // refuse a scan that does not end at EOI. The whole file renders.
    let large = jpeg(2400, 1600);
    let thumbnail = "/on_demand/thumbnail/?w=300";
    let rendered = server
        .post_raw(thumbnail, "image/jpeg", large.clone())
        .await;
    assert_eq!(rendered.status(), StatusCode::OK);
    let rendered = image::load_from_memory(&rendered.bytes().await.unwrap()).unwrap();
    assert_eq!((rendered.width(), rendered.height()), (300, 200));
    for path in ["/", thumbnail] {
        let cut = large[..large.len() - 2].to_vec();
        let message = expect_error(
            server.post_raw(path, "image/jpeg", cut).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "undecodable_image",
        )
        .await;
        assert!(message.contains("truncated"), "{path}: {message}");
    }
    // Each format's structure is walked at upload: a file cut short in transfer is
    // refused before it is stored, not on its first transform.
    let picture = DynamicImage::ImageRgba8(halves(64, 48).to_rgba8());
    for format in [
        ImageFormat::Gif,
        ImageFormat::WebP,
        ImageFormat::Bmp,
        ImageFormat::Tiff,
    ] {
        let whole = encode(&picture, format);
        let message = expect_error(
            server
                .post_raw(
                    "/",
                    "application/octet-stream",
                    whole[..whole.len() - 40].to_vec(),
                )
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "undecodable_image",
        )
        .await;
        // (The image crate writes a TIFF's directory after its strips, so a cut TIFF
        // fails on its header; the walk's own tests cover strips cut short.)
        let expected = match format {
            ImageFormat::Tiff => "cannot read this tiff header",
            _ => "truncated",
        };
        assert!(message.contains(expected), "{format:?}: {message}");
    }
    let stored = server.stored_files().await;
    assert!(stored.is_empty(), "{stored:?}");
}

async fn a_jpeg_whose_scan_was_cut_is_422_not_grey(backend: Backend) {
    let server = TestServer::on(backend).await;
    // Cut mid-scan and given its end-of-image marker back, the file is whole in
    // structure: libjpeg would pad the missing rows with grey and call it a success.
    let whole = encode(&DynamicImage::ImageRgb8(noise(64, 64)), ImageFormat::Jpeg);
    let mut patched = whole[..whole.len() * 2 / 3].to_vec();
    patched.extend_from_slice(&[0xFF, 0xD9]);
    let id = server.upload_id(&patched).await;
    for path in [
        format!("/images/{id}/convert/?format=png"),
        format!("/images/{id}/thumbnail/?w=8"),
    ] {
        let message = expect_error(
            server.get(&path).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "undecodable_image",
        )
        .await;
        assert!(message.contains("premature end"), "{path}: {message}");
    }
    expect_error(
        server
            .post_raw("/on_demand/resize/?w=32", "image/jpeg", patched)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "undecodable_image",
    )
    .await;
    // Nothing was cached for the failed transforms: only the original and its sidecar.
    assert_eq!(server.stored_files().await.len(), 2);
}

async fn images_over_the_pixel_limit_are_413_from_the_header(backend: Backend) {
    let server = TestServer::on_with(backend, |s| s.limits.max_input_pixels = 10_000).await;
    let message = expect_error(
        server
            .post_raw(
                "/",
                "image/bmp",
                fixture("bomb-reallybig-3000000x2000000.bmp"),
            )
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "max_input_pixels",
    )
    .await;
    assert!(message.contains("3000000x2000000"), "{message}");
    expect_error(
        server
            .post_raw("/on_demand/thumbnail/", "image/png", png(101, 100))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "max_input_pixels",
    )
    .await;
    assert_eq!(
        server
            .post_raw("/", "image/png", png(100, 100))
            .await
            .status(),
        StatusCode::CREATED
    );
}

async fn bodies_over_the_upload_limit_are_413(backend: Backend) {
    let server = TestServer::on_with(backend, |s| s.limits.max_upload_bytes = 4096).await;
    // Streamed past the limit (no Content-Length to refuse up front).
    let big = noise_png(100, 100);
    assert!(big.len() > 4096);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(1024).map(|c| Ok(c.to_vec())).collect();
    let response = server
        .post_raw(
            "/",
            "image/png",
            reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
        )
        .await;
    expect_error(response, StatusCode::PAYLOAD_TOO_LARGE, "max_upload_bytes").await;

    let form = reqwest::multipart::Form::new().part("image", reqwest::multipart::Part::bytes(big));
    let response = server.post_form("/", form).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(server.stored_files().await.is_empty());

    // A file of exactly the limit fits, though its form's framing (and a text field)
    // make the declared body longer: a JPEG padded with a comment to 4096 bytes.
    let small = jpeg(16, 16);
    let padding = 4096 - small.len() - 4;
    let mut exact = vec![0xFF, 0xD8, 0xFF, 0xFE];
    exact.extend(u16::try_from(padding + 2).unwrap().to_be_bytes());
    exact.extend(vec![b' '; padding]);
    exact.extend(&small[2..]);
    assert_eq!(exact.len(), 4096);
    let form = reqwest::multipart::Form::new()
        .text("desc", "x".repeat(1000))
        .part("image", reqwest::multipart::Part::bytes(exact.clone()));
    let response = server.post_form("/", form).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = sha1_hex(&exact);
    let meta: serde_json::Value = server.get_json(&format!("/images/{id}/meta/")).await;
    assert_eq!(meta["bytes"], 4096);
}

async fn a_declared_length_over_the_limit_is_refused_without_reading_the_body(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Claims 1 GiB but sends none of it: the answer must come anyway, at once.
    socket
        .write_all(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\nContent-Length: 1073741824\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        loop {
            let n = socket.read(&mut buffer).await.unwrap();
            answer.extend_from_slice(&buffer[..n]);
            if n == 0
                || answer.windows(4).any(|w| w == b"}}\r\n")
                || String::from_utf8_lossy(&answer).contains("}}")
            {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer while the body was withheld");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("max_upload_bytes"), "{answer}");
}

async fn malformed_multipart_is_400(backend: Backend) {
    let server = TestServer::on(backend).await;
    let response = server
        .post_raw(
            "/",
            "multipart/form-data; boundary=XYZ",
            b"--XYZ\r\nthis is not a part".to_vec(),
        )
        .await;
    expect_error(response, StatusCode::BAD_REQUEST, "invalid_form").await;
    let response = server
        .post_raw("/", "multipart/form-data", b"no boundary".to_vec())
        .await;
    expect_error(response, StatusCode::BAD_REQUEST, "invalid_form").await;
}

/// Filesystem only: the store is made to fail by taking its directory away.
#[tokio::test]
async fn a_failing_store_is_503_and_the_service_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let server = TestServer::on_with(Backend::Filesystem, |s| {
        s.store = root.to_str().unwrap().to_string();
    })
    .await;
    let bytes = jpeg(20, 20);
    let id = sha1_hex(&bytes);
    server.upload(&bytes).await;

    // Swap the store's directory for a plain file: every store operation now fails
    // with an I/O error (ENOTDIR) that is neither "not found" nor "already exists".
    let aside = root.with_extension("aside");
    std::fs::rename(&root, &aside).unwrap();
    std::fs::write(&root, b"not a directory").unwrap();
    let response = server.get(&format!("/images/{id}/")).await;
    assert!(response.headers().contains_key("retry-after"));
    let message = expect_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
    )
    .await;
    // The I/O error names the store's directory: for the log, not for the client.
    assert!(
        !message.contains(root.to_str().unwrap()) && !message.contains(&id),
        "{message}"
    );
    expect_error(
        server.post_raw("/", "image/png", png(9, 9)).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
    )
    .await;

    // Put the directory back: the same server answers again, no restart needed.
    std::fs::remove_file(&root).unwrap();
    std::fs::rename(&aside, &root).unwrap();
    assert_eq!(server.get_bytes(&format!("/images/{id}/")).await, bytes);
}
