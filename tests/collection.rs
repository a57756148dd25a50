//! Images as a collection: listing with a cursor, and deletion.

mod common;

use common::on_every_store;
use common::*;
use futures::future::join_all;

on_every_store!(
    listing_pages_through_every_image_in_id_order,
    a_cursor_stays_valid_while_images_are_added,
    listing_rejects_bad_parameters,
    delete_removes_the_blob_its_sidecar_and_every_transform,
    a_read_racing_a_delete_gets_the_whole_image_or_a_404,
);

/// Uploads `count` distinct PNGs and returns their ids, sorted.
async fn upload_distinct(server: &TestServer, count: u32, first_width: u32) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        let bytes = png(first_width + n, 10);
        server.upload(&bytes).await;
        ids.push(sha1_hex(&bytes));
    }
    ids.sort();
    ids
}

/// Every page of the listing from `cursor` on, as (ids, next_cursor) per page.
async fn page(server: &TestServer, query: &str) -> (Vec<String>, Option<String>) {
    let response = server.get(&format!("/images/?{query}")).await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let ids = body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["id"].as_str().unwrap().to_string())
        .collect();
    (ids, body["next_cursor"].as_str().map(str::to_string))
}

async fn listing_pages_through_every_image_in_id_order(backend: Backend) {
    let server = TestServer::on(backend).await;
    assert_eq!(page(&server, "").await, (vec![], None), "an empty store");
    let ids = upload_distinct(&server, 7, 20).await;
    // A cached transform and a lease-free store: only blobs are listed.
    server.get(&format!("/images/{}/thumbnail/", ids[0])).await;

    let (first, cursor) = page(&server, "limit=3").await;
    assert_eq!(first, ids[..3]);
    assert_eq!(cursor.as_deref(), Some(ids[2].as_str()));
    let (second, cursor) = page(&server, &format!("limit=3&cursor={}", cursor.unwrap())).await;
    assert_eq!(second, ids[3..6]);
    let (last, cursor) = page(&server, &format!("limit=3&cursor={}", cursor.unwrap())).await;
    assert_eq!((last, cursor), (ids[6..].to_vec(), None));

    let body = server.get_json("/images/?limit=1").await;
    let image = &body["images"][0];
    let width = (20..27).find(|w| sha1_hex(&png(*w, 10)) == ids[0]).unwrap();
    assert_eq!(image["url"], server.url(&format!("/images/{}/", ids[0])));
    assert_eq!(image["content_type"], "image/png");
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(width as u64), Some(10))
    );
    assert_eq!(image["bytes"].as_u64(), Some(png(width, 10).len() as u64));
    assert!(image["created"].is_string());
}

async fn a_cursor_stays_valid_while_images_are_added(backend: Backend) {
    let server = TestServer::on(backend).await;
    let before = upload_distinct(&server, 6, 40).await;
    let (first, cursor) = page(&server, "limit=3").await;
    let cursor = cursor.unwrap();
    let added = upload_distinct(&server, 6, 80).await;
    let mut rest = Vec::new();
    let mut next = Some(cursor.clone());
    while let Some(cursor) = next {
        let (ids, following) = page(&server, &format!("limit=4&cursor={cursor}")).await;
        rest.extend(ids);
        next = following;
    }
    // Everything after the cursor, old and new, exactly once and in order; nothing
    // from the first page again.
    let mut expected: Vec<String> = before[3..]
        .iter()
        .chain(added.iter().filter(|id| **id > cursor))
        .cloned()
        .collect();
    expected.sort();
    assert_eq!(rest, expected);
    assert!(first.iter().all(|id| !rest.contains(id)));
}

async fn listing_rejects_bad_parameters(backend: Backend) {
    let server = TestServer::on(backend).await;
    for (query, code) in [
        ("limit=0", "invalid_parameter"),
        ("limit=1001", "invalid_parameter"),
        ("limit=ten", "invalid_parameter"),
        ("cursor=not-an-id", "invalid_image_id"),
        ("sort=name&limit=2", "unknown_parameter"),
    ] {
        let response = server.get(&format!("/images/?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{query}");
    }
}

async fn delete_removes_the_blob_its_sidecar_and_every_transform(backend: Backend) {
    let server = TestServer::on(backend).await;
    let doomed = png(30, 20);
    let kept = png(31, 20);
    let id = sha1_hex(&doomed);
    server.upload(&doomed).await;
    server.upload(&kept).await;
    for transform in ["thumbnail/", "grayscale/?format=webp"] {
        let response = server.get(&format!("/images/{id}/{transform}")).await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(server.stored_files().await.len(), 6);

    let deleted = server.delete(&format!("/images/{id}/")).await;
    assert_eq!(deleted.status(), 204);
    assert!(deleted.bytes().await.unwrap().is_empty());
    let kept_id = sha1_hex(&kept);
    assert_eq!(
        server.stored_files().await,
        vec![blob_key(&kept_id), format!("{}.meta", blob_key(&kept_id))]
    );
    for path in ["", "meta/", "thumbnail/"] {
        let response = server.get(&format!("/images/{id}/{path}")).await;
        assert_eq!(response.status(), 404, "{path}");
    }
    assert_eq!(page(&server, "").await.0, vec![kept_id]);

    let again = server.delete(&format!("/images/{id}/")).await;
    assert_eq!(again.status(), 404);
    let body: serde_json::Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], "image_not_found");
    // Uploading the same bytes again stores it anew.
    let reupload = server.post_raw("/", "image/png", doomed.clone()).await;
    assert_eq!(reupload.status(), 201);
}

async fn a_read_racing_a_delete_gets_the_whole_image_or_a_404(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = noise_png(300, 300);
    let id = sha1_hex(&bytes);
    server.upload(&bytes).await;
    let path = format!("/images/{id}/");
    let reads = (0..20).map(|_| async {
        let response = server.get(&path).await;
        (response.status().as_u16(), response.bytes().await.unwrap())
    });
    let delete = async {
        tokio::task::yield_now().await;
        server.delete(&path).await.status()
    };
    let (reads, deleted) = tokio::join!(join_all(reads), delete);
    assert_eq!(deleted, 204);
    for (status, body) in reads {
        match status {
            200 => assert_eq!(body, bytes, "a 200 must carry the whole image"),
            404 => {}
            other => panic!("a read racing a delete answered {other}"),
        }
    }
    assert_eq!(assert_consistent(&server.store).await, Vec::<String>::new());
}
