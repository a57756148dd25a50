//! Reading originals and metadata back: headers, conditional requests, ranges, and a
//! store written by the original ProgImage served as it is.

mod common;

use common::on_every_store;
use common::*;
use reqwest::StatusCode;

on_every_store!(
    original_is_returned_byte_for_byte_with_its_own_content_type,
    head_gives_the_headers_without_a_body,
    if_none_match_gives_304_for_originals_and_transforms,
    single_byte_ranges_get_206_and_bad_ones_416,
    meta_returns_the_sidecar,
    original_converted_by_extension_is_cached_like_a_transform,
    a_premade_progimage_filebase_is_served_as_is,
);

async fn original_is_returned_byte_for_byte_with_its_own_content_type(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = png(40, 30);
    let id = sha1_hex(&bytes);
    server.upload(&bytes).await;

    let response = server.get(&format!("/images/{id}/")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["content-length"], bytes.len().to_string().as_str());
    assert_eq!(headers["etag"], format!("\"{id}\"").as_str());
    assert_eq!(
        headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(response.bytes().await.unwrap(), bytes);

    // Without the trailing slash too.
    assert_eq!(server.get_bytes(&format!("/images/{id}")).await, bytes);
}

async fn head_gives_the_headers_without_a_body(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = jpeg(50, 50);
    let id = sha1_hex(&bytes);
    server.upload(&bytes).await;
    let response = server
        .client
        .head(server.url(&format!("/images/{id}/")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-length"],
        bytes.len().to_string().as_str()
    );
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    assert!(response.bytes().await.unwrap().is_empty());
}

async fn if_none_match_gives_304_for_originals_and_transforms(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = jpeg(50, 50);
    let id = sha1_hex(&bytes);
    server.upload(&bytes).await;
    for path in [
        format!("/images/{id}/"),
        format!("/images/{id}/thumbnail/?size=20"),
    ] {
        let first = server.get(&path).await;
        let etag = first.headers()["etag"].clone();
        let response = server
            .client
            .get(server.url(&path))
            .header("if-none-match", etag.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(response.headers()["etag"], etag);
        assert!(response.bytes().await.unwrap().is_empty());
        let other = server
            .client
            .get(server.url(&path))
            .header("if-none-match", "\"other\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::OK, "{path}");
    }
}

async fn single_byte_ranges_get_206_and_bad_ones_416(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = png(64, 64);
    let id = sha1_hex(&bytes);
    let total = bytes.len();
    server.upload(&bytes).await;
    let path = format!("/images/{id}/");
    let range = |value: &'static str| {
        server
            .client
            .get(server.url(&path))
            .header("range", value)
            .send()
    };

    let response = range("bytes=0-9").await.unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes 0-9/{total}").as_str()
    );
    assert_eq!(response.headers()["content-length"], "10");
    assert_eq!(response.bytes().await.unwrap(), bytes[0..10]);

    let response = range("bytes=-5").await.unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.bytes().await.unwrap(), bytes[total - 5..]);

    let response = range("bytes=100-").await.unwrap();
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes 100-{}/{total}", total - 1).as_str()
    );
    assert_eq!(response.bytes().await.unwrap(), bytes[100..]);

    let response = range("bytes=99999999-").await.unwrap();
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes */{total}").as_str()
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "range_not_satisfiable");

    // Several ranges are not supported: the whole object is sent, as RFC 9110 allows.
    let response = range("bytes=0-1,5-6").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().len(), total);
}

async fn meta_returns_the_sidecar(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = jpeg(33, 22);
    let id = sha1_hex(&bytes);
    server.upload(&bytes).await;
    let response = server.get(&format!("/images/{id}/meta/")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let meta: serde_json::Value = response.json().await.unwrap();
    assert_eq!(meta["file_name"], format!("{id}.jpeg"));
    assert_eq!(
        (meta["width"].as_u64(), meta["height"].as_u64()),
        (Some(33), Some(22))
    );
    assert_eq!(meta["content_type"], "image/jpeg");
    assert_eq!(meta["bytes"].as_u64(), Some(bytes.len() as u64));
}

async fn original_converted_by_extension_is_cached_like_a_transform(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = jpeg(80, 60);
    let id = sha1_hex(&bytes);
    server.upload(&bytes).await;
    for (extension, content_type, format) in [
        ("png", "image/png", image::ImageFormat::Png),
        ("webp", "image/webp", image::ImageFormat::WebP),
        ("gif", "image/gif", image::ImageFormat::Gif),
        ("jpg", "image/jpeg", image::ImageFormat::Jpeg),
    ] {
        let path = format!("/images/{id}.{extension}");
        let response = server.get(&path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["content-type"], content_type);
        assert_eq!(response.headers()["x-cache"], "MISS");
        let body = response.bytes().await.unwrap();
        assert_eq!(image::guess_format(&body).unwrap(), format);
        let converted = decode(&body);
        assert_eq!((converted.width(), converted.height()), (80, 60));
        assert!(is_red(&converted, 10, 30) && is_blue(&converted, 70, 30));
        let again = server.get(&path).await;
        assert_eq!(again.headers()["x-cache"], "HIT");
        assert_eq!(again.bytes().await.unwrap(), body);
    }
    let derived = server
        .stored_files()
        .await
        .iter()
        .filter(|f| f.contains(&format!(".e{ENGINE_VERSION}.convert")))
        .count();
    assert_eq!(derived, 4);
}

async fn a_premade_progimage_filebase_is_served_as_is(backend: Backend) {
    // Objects laid out as the original wrote them, planted behind the server's back.
    let server = TestServer::on(backend).await;
    let bytes = png(120, 90);
    let id = sha1_hex(&bytes);
    server.write_object(&blob_key(&id), &bytes).await;
    server
        .write_object(
            &format!("{}.meta", blob_key(&id)),
            br#"{"file_name": "cat.png"}"#,
        )
        .await;
    // A second image with no sidecar at all.
    let bare = jpeg(30, 20);
    let bare_id = sha1_hex(&bare);
    server.write_object(&blob_key(&bare_id), &bare).await;

    let response = server.get(&format!("/images/{id}/")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.bytes().await.unwrap(), bytes);
    let meta: serde_json::Value = server.get_json(&format!("/images/{id}/meta/")).await;
    assert_eq!(meta["file_name"], "cat.png");
    let thumb = server.get_image(&format!("/images/{id}/thumbnail/")).await;
    assert_eq!(
        (thumb.width(), thumb.height()),
        (120, 90),
        "thumbnails never enlarge"
    );

    let response = server.get(&format!("/images/{bare_id}/")).await;
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    assert_eq!(response.bytes().await.unwrap(), bare);
    let meta: serde_json::Value = server.get_json(&format!("/images/{bare_id}/meta/")).await;
    assert_eq!(
        (meta["width"].as_u64(), meta["height"].as_u64()),
        (Some(30), Some(20))
    );

    // A blob that is not an image at all is listed by name, not a failed listing.
    let junk = b"left here by something else".to_vec();
    let junk_id = sha1_hex(&junk);
    server.write_object(&blob_key(&junk_id), &junk).await;
    let listing: serde_json::Value = server.get_json("/images/").await;
    let listed: Vec<(&str, Option<u64>)> = listing["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| (image["id"].as_str().unwrap(), image["width"].as_u64()))
        .collect();
    assert_eq!(listed.len(), 3, "{listing}");
    assert!(listed.contains(&(id.as_str(), None)), "{listing}");
    assert!(listed.contains(&(bare_id.as_str(), Some(30))), "{listing}");
    assert!(listed.contains(&(junk_id.as_str(), None)), "{listing}");
}
