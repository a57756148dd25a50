//! Transforms over HTTP: sizes and pixels, caching, coalescing, orientation, ASCII art,
//! on-demand, and the same engine from the command line.

mod common;

use common::on_every_store;
use common::*;
use image::ImageFormat;
use reqwest::StatusCode;

on_every_store!(
    thumbnail_of_a_stored_image_fits_the_box_and_keeps_the_format,
    transforms_are_cached_as_siblings_under_a_canonical_key,
    concurrent_requests_for_a_new_transform_compute_it_once,
    with_store_transforms_off_every_get_computes_and_nothing_is_stored,
    on_demand_returns_the_transform_and_stores_nothing,
    exif_orientation_is_applied_before_anything_else,
    ascii_art_has_the_asked_width_corrected_rows_and_only_ramp_characters,
    a_long_pipeline_is_cached_under_a_hashed_key,
    served_results_stay_in_memory_until_their_image_is_deleted,
);

/// Tests that need two servers on one store.
mod shared_stores {
    use super::a_result_read_from_the_store_is_kept_in_memory;
    crate::common::on_shared_stores!(a_result_read_from_the_store_is_kept_in_memory);
}

/// The ASCII ramp, dark to light, as documented.
const RAMP: &str = "@%#*+=-:. ";

async fn thumbnail_of_a_stored_image_fits_the_box_and_keeps_the_format(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = jpeg(256, 192);
    let id = sha1_hex(&bytes);
    server.upload(&bytes).await;

    let response = server.get(&format!("/images/{id}/thumbnail/")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    assert_eq!(
        response.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let thumb = decode(&response.bytes().await.unwrap());
    assert_eq!((thumb.width(), thumb.height()), (128, 96));
    assert!(is_red(&thumb, 10, 48) && is_blue(&thumb, 118, 48));

    for (query, expected) in [
        ("size=64", (64, 48)),
        ("w=100", (100, 75)),
        ("h=30", (40, 30)),
        ("w=200&h=50", (67, 50)),
    ] {
        let body = server
            .get_bytes(&format!("/images/{id}/thumbnail/?{query}"))
            .await;
        let thumb = decode(&body);
        assert_eq!((thumb.width(), thumb.height()), expected, "{query}");
    }
    let png = server
        .get(&format!("/images/{id}/thumbnail/?format=png"))
        .await;
    assert_eq!(png.headers()["content-type"], "image/png");
    assert_eq!(
        image::guess_format(&png.bytes().await.unwrap()).unwrap(),
        ImageFormat::Png
    );
}

async fn transforms_are_cached_as_siblings_under_a_canonical_key(backend: Backend) {
    // Without the hot cache, so that every hit below is a read of the store.
    let server = TestServer::on_with(backend, |s| s.hot_cache_bytes = 0).await;
    let bytes = png(100, 100);
    let id = sha1_hex(&bytes);
    server.upload(&bytes).await;

    let first = server
        .get(&format!("/images/{id}/thumbnail/?w=50&h=40"))
        .await;
    assert_eq!(first.headers()["x-cache"], "MISS");
    let first_body = first.bytes().await.unwrap();
    let reordered = server
        .get(&format!("/images/{id}/thumbnail/?h=40&w=50"))
        .await;
    assert_eq!(reordered.headers()["x-cache"], "HIT");
    assert_eq!(reordered.bytes().await.unwrap(), first_body);

    let key = format!(
        "{}.e{ENGINE_VERSION}.thumbnail(w=50,h=40).png",
        blob_key(&id)
    );
    assert_eq!(server.read_object(&key).await.unwrap(), first_body);

    // A cached result is served from the store: replacing the object (which nothing
    // but a test would do) shows the server does not recompute it.
    server.write_object(&key, b"cached bytes").await;
    let served = server
        .get(&format!("/images/{id}/thumbnail/?w=50&h=40"))
        .await;
    assert_eq!(served.bytes().await.unwrap(), "cached bytes");
}

async fn concurrent_requests_for_a_new_transform_compute_it_once(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = jpeg(1600, 1200);
    let id = sha1_hex(&bytes);
    server.upload(&bytes).await;
    let path = format!("/images/{id}/thumbnail/?size=300&q=90");
    let requests = (0..24).map(|_| {
        let request = server.client.get(server.url(&path));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let cache = response.headers()["x-cache"].to_str().unwrap().to_string();
            (cache, response.bytes().await.unwrap())
        }
    });
    let results = futures::future::join_all(requests).await;
    let computed = results.iter().filter(|(cache, _)| cache == "MISS").count();
    assert_eq!(
        computed,
        1,
        "one computation for {} requests: {:?}",
        results.len(),
        results.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    assert!(
        results.iter().all(|(_, body)| body == &results[0].1),
        "every response is the same bytes"
    );
    let derived: Vec<_> = server
        .stored_files()
        .await
        .into_iter()
        .filter(|f| f.contains(&derived_marker()))
        .collect();
    assert_eq!(derived.len(), 1, "{derived:?}");
}

async fn with_store_transforms_off_every_get_computes_and_nothing_is_stored(backend: Backend) {
    let server = TestServer::on_with(backend, |s| {
        s.store_transforms = false;
        s.hot_cache_bytes = 0;
    })
    .await;
    let bytes = jpeg(1600, 1200);
    let id = sha1_hex(&bytes);
    server.upload(&bytes).await;
    let stored_before = server.stored_files().await;
    let path = format!("/images/{id}/thumbnail/?w=200&q=80");

    let first = server.get(&path).await;
    assert_eq!(first.headers()["x-cache"], "MISS");
    assert_eq!(first.headers()["content-type"], "image/jpeg");
    let first_body = first.bytes().await.unwrap();
    let thumb = decode(&first_body);
    assert_eq!((thumb.width(), thumb.height()), (200, 150));
    let second = server.get(&path).await;
    assert_eq!(second.headers()["x-cache"], "MISS", "computed again");
    assert_eq!(second.bytes().await.unwrap(), first_body, "and the same");

    // Concurrent requests for one key still compute it once.
    let requests = (0..8).map(|_| server.client.get(server.url(&path)).send());
    let statuses: Vec<String> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|r| {
            r.unwrap().headers()["x-cache"]
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        statuses.iter().filter(|s| *s == "MISS").count() < statuses.len(),
        "{statuses:?}"
    );
    assert_eq!(server.stored_files().await, stored_before, "nothing stored");
}

async fn on_demand_returns_the_transform_and_stores_nothing(backend: Backend) {
    let server = TestServer::on(backend).await;
    let response = server
        .post_raw("/on_demand/thumbnail/", "image/jpeg", jpeg(256, 192))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = response.bytes().await.unwrap();
    assert_eq!(image::guess_format(&body).unwrap(), ImageFormat::Jpeg);
    let thumb = decode(&body);
    assert_eq!((thumb.width(), thumb.height()), (128, 96));

    let form =
        reqwest::multipart::Form::new().part("image", reqwest::multipart::Part::bytes(png(90, 30)));
    let response = server.post_form("/on_demand/ascii/?width=30", form).await;
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(response.text().await.unwrap().lines().count(), 5);

    let stored = server.stored_files().await;
    assert!(stored.is_empty(), "{stored:?}");
}

async fn exif_orientation_is_applied_before_anything_else(backend: Backend) {
    let server = TestServer::on(backend).await;
    // Stored sideways: 64x32, red left, blue right; orientation 6 means "rotate 90°
    // clockwise to display", so upright it is 32x64 with red on top.
    let bytes = jpeg_with_orientation(&halves(64, 32), 6);
    let id = sha1_hex(&bytes);
    let reply = server.upload(&bytes).await;
    assert_eq!(reply["format"], "jpeg");

    let upright = server.get_image(&format!("/images/{id}.png")).await;
    assert_eq!((upright.width(), upright.height()), (32, 64));
    assert!(is_red(&upright, 16, 8) && is_blue(&upright, 16, 56));

    let thumb = server
        .get_image(&format!("/images/{id}/thumbnail/?size=32"))
        .await;
    assert_eq!(
        (thumb.width(), thumb.height()),
        (16, 32),
        "size maths happen after rotation"
    );

    // The output carries no orientation tag, so viewers do not rotate it again.
    let mut decoder = image::ImageReader::new(std::io::Cursor::new(
        server
            .get_bytes(&format!("/images/{id}/thumbnail/"))
            .await
            .to_vec(),
    ))
    .with_guessed_format()
    .unwrap()
    .into_decoder()
    .unwrap();
    use image::ImageDecoder;
    assert_eq!(
        decoder.orientation().unwrap(),
        image::metadata::Orientation::NoTransforms
    );

    // A real camera-style file: 2x1 with orientation 8 is 1x2 upright.
    let rectangle = fixture("orientation_rectangle.jpg");
    let response = server
        .post_raw("/on_demand/convert/?format=png", "image/jpeg", rectangle)
        .await;
    let upright = decode(&response.bytes().await.unwrap());
    assert_eq!((upright.width(), upright.height()), (1, 2));
}

async fn ascii_art_has_the_asked_width_corrected_rows_and_only_ramp_characters(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = png(200, 100);
    let id = sha1_hex(&bytes);
    server.upload(&bytes).await;

    let response = server.get(&format!("/images/{id}/ascii/")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // 100 columns; 200x100 at 100 columns is 50 rows, halved for the cell aspect: 25.
    assert_eq!(lines.len(), 25);
    assert!(lines.iter().all(|l| l.chars().count() == 100));
    assert!(text.chars().all(|c| c == '\n' || RAMP.contains(c)));

    let narrow = server
        .get(&format!("/images/{id}/ascii/?width=40"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(narrow.lines().count(), 10);
    assert!(narrow.lines().all(|l| l.len() == 40));

    // White maps to the light end of the ramp, and to the dark end when inverted.
    let white = encode(
        &image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            20,
            20,
            image::Rgb([255, 255, 255]),
        )),
        ImageFormat::Png,
    );
    let white_id = sha1_hex(&white);
    server.upload(&white).await;
    let plain = server
        .get(&format!("/images/{white_id}/ascii/?width=10"))
        .await
        .text()
        .await
        .unwrap();
    assert!(plain.lines().all(|l| l == "          "), "{plain:?}");
    let inverted = server
        .get(&format!("/images/{white_id}/ascii/?width=10&invert=true"))
        .await
        .text()
        .await
        .unwrap();
    assert!(inverted.lines().all(|l| l == "@@@@@@@@@@"), "{inverted:?}");
}

#[test]
fn the_cli_runs_the_same_engine_on_local_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jpg");
    std::fs::write(&input, jpeg(256, 192)).unwrap();
    let output = dir.path().join("out.png");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_progimage"))
        .args(["transform", "thumbnail"])
        .arg(&input)
        .arg(&output)
        .args(["--param", "size=64"])
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&output).unwrap();
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        ImageFormat::Png,
        "format follows the extension"
    );
    let thumb = decode(&bytes);
    assert_eq!((thumb.width(), thumb.height()), (64, 48));

    let failed = std::process::Command::new(env!("CARGO_BIN_EXE_progimage"))
        .args(["transform", "thumbnail"])
        .arg(&input)
        .arg(&output)
        .args(["--param", "size=0"])
        .output()
        .unwrap();
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("size"));
}

/// A key too long for a file name (255 bytes) is hashed: the result is served and
/// cached like any other, on every store.
async fn a_long_pipeline_is_cached_under_a_hashed_key(backend: Backend) {
    let server = TestServer::on(backend).await;
    let id = server.upload_id(&png(120, 80)).await;
    let steps: Vec<String> = (0..8).map(|n| format!("resize(w={})", 100 - n)).collect();
    let path = format!("/images/{id}/{}/", steps.join("/"));
    let first = server.get(&path).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["x-cache"], "MISS");
    let image = decode(&first.bytes().await.unwrap());
    // Each step rounds its height: 67, 66, 65, ... 60.
    assert_eq!((image.width(), image.height()), (93, 60));
    let cached: Vec<String> = server
        .stored_files()
        .await
        .into_iter()
        .filter(|key| key.contains(&derived_marker()))
        .collect();
    assert_eq!(cached.len(), 1);
    let name = cached[0].rsplit('/').next().unwrap();
    assert!(
        name.len() < 255 && name.contains(&format!(".e{ENGINE_VERSION}.sha1-")),
        "{name}"
    );
    assert!(name.ends_with(".png"), "{name}");
    assert_eq!(server.get(&path).await.headers()["x-cache"], "HIT");
}

/// The hot cache: a result computed here is answered from memory afterwards (the
/// store object can vanish and it is still served, unchanged), until a DELETE of its
/// image, which ends it at once. Uploading the same bytes again brings it back.
async fn served_results_stay_in_memory_until_their_image_is_deleted(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = jpeg(400, 300);
    let id = server.upload_id(&bytes).await;
    let path = format!("/images/{id}/thumbnail/?w=100");
    let first = server.get(&path).await;
    assert_eq!(first.headers()["x-cache"], "MISS");
    let first = first.bytes().await.unwrap();
    assert_eq!(decode(&first).width(), 100);

    let key = format!(
        "{}.e{ENGINE_VERSION}.thumbnail(w=100).q80.jpeg",
        blob_key(&id)
    );
    assert!(server.read_object(&key).await.is_some());
    server.store.delete(&key.as_str().into()).await.unwrap();
    let again = server.get(&path).await;
    assert_eq!(again.headers()["x-cache"], "HIT");
    assert_eq!(again.bytes().await.unwrap(), first);
    assert!(
        server.read_object(&key).await.is_none(),
        "a hit from memory must not have touched the store"
    );

    let deleted = server.delete(&format!("/images/{id}/")).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = server.get(&path).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_eq!(gone.headers()["content-type"], "application/json");

    server.upload(&bytes).await;
    let back = server.get(&path).await;
    assert_eq!(back.status(), StatusCode::OK);
    assert_eq!(back.bytes().await.unwrap(), first);
}

/// A hit read from the store (computed by another instance) is remembered too: once
/// served, it no longer needs the store object.
async fn a_result_read_from_the_store_is_kept_in_memory(backend: Backend) {
    let computing = TestServer::on(backend).await;
    let id = computing.upload_id(&png(300, 200)).await;
    let path = format!("/images/{id}/thumbnail/?w=60");
    let computed = computing.get_bytes(&path).await;

    let store_url = computing.store_url.clone();
    let reading = TestServer::on_with(backend, |s| s.store = store_url).await;
    let first = reading.get(&path).await;
    assert_eq!(first.headers()["x-cache"], "HIT");
    assert_eq!(first.bytes().await.unwrap(), computed);

    let key = format!("{}.e{ENGINE_VERSION}.thumbnail(w=60).png", blob_key(&id));
    reading.store.delete(&key.as_str().into()).await.unwrap();
    let second = reading.get(&path).await;
    assert_eq!(second.headers()["x-cache"], "HIT");
    assert_eq!(second.bytes().await.unwrap(), computed);
}
