//! Metadata: `GET .../meta/` with an ETag, `PATCH .../meta/` with If-Match, tags and
//! the tag filter of the listing.

mod common;

use common::on_every_store;
use common::*;
use futures::future::join_all;
use serde_json::json;

on_every_store!(
    meta_has_an_etag_and_answers_304_when_it_matches,
    a_patch_changes_name_desc_and_tags_in_the_stored_sidecar,
    if_match_refuses_a_stale_version_and_keeps_the_sidecar,
    concurrent_patches_from_one_version_let_exactly_one_win,
    concurrent_patches_without_if_match_all_land_one_after_another,
    a_blob_without_a_sidecar_gets_one_on_its_first_patch,
    bad_patches_are_refused_with_the_field_named,
    the_listing_filters_by_tag_with_a_cursor,
);

async fn patch(
    server: &TestServer,
    id: &str,
    body: serde_json::Value,
    if_match: Option<&str>,
) -> reqwest::Response {
    let mut request = server
        .client
        .patch(server.url(&format!("/images/{id}/meta/")))
        .json(&body);
    if let Some(etag) = if_match {
        request = request.header("if-match", etag);
    }
    request.send().await.unwrap()
}

fn etag_of(response: &reqwest::Response) -> String {
    response.headers()["etag"].to_str().unwrap().to_string()
}

/// The sidecar as stored, parsed.
async fn stored_sidecar(server: &TestServer, id: &str) -> serde_json::Value {
    let bytes = server
        .read_object(&format!("{}.meta", blob_key(id)))
        .await
        .expect("a sidecar");
    serde_json::from_slice(&bytes).unwrap()
}

async fn meta_has_an_etag_and_answers_304_when_it_matches(backend: Backend) {
    let server = TestServer::on(backend).await;
    let id = server.upload_id(&png(12, 8)).await;
    let response = server.get(&format!("/images/{id}/meta/")).await;
    assert_eq!(response.status(), 200);
    let etag = etag_of(&response);
    assert_eq!(etag.len(), 42, "a quoted SHA-1: {etag}");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    let again = server
        .client
        .get(server.url(&format!("/images/{id}/meta/")))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
}

async fn a_patch_changes_name_desc_and_tags_in_the_stored_sidecar(backend: Backend) {
    let server = TestServer::on(backend).await;
    let id = server.upload_id(&png(12, 8)).await;
    let before = etag_of(&server.get(&format!("/images/{id}/meta/")).await);
    let response = patch(
        &server,
        &id,
        json!({"name": "Kitten", "desc": "on a mat", "tags": ["cats", "cute", "cats"]}),
        None,
    )
    .await;
    assert_eq!(response.status(), 200);
    let after = etag_of(&response);
    assert_ne!(after, before);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["tags"], json!(["cats", "cute"]));
    assert_eq!(body["width"], 12, "read-only fields are kept");

    let stored = stored_sidecar(&server, &id).await;
    assert_eq!(stored["name"], "Kitten");
    assert_eq!(stored["desc"], "on a mat");
    assert_eq!(stored["tags"], json!(["cats", "cute"]));
    assert_eq!(stored["height"], 8);
    let fetched = server.get(&format!("/images/{id}/meta/")).await;
    assert_eq!(etag_of(&fetched), after, "GET reports the new version");

    // null clears; absent fields stay.
    let cleared = patch(&server, &id, json!({"desc": null}), Some(&after)).await;
    assert_eq!(cleared.status(), 200);
    let stored = stored_sidecar(&server, &id).await;
    assert!(stored.get("desc").is_none());
    assert_eq!(stored["name"], "Kitten");
}

async fn if_match_refuses_a_stale_version_and_keeps_the_sidecar(backend: Backend) {
    let server = TestServer::on(backend).await;
    let id = server.upload_id(&png(12, 8)).await;
    let first = etag_of(&server.get(&format!("/images/{id}/meta/")).await);
    let changed = patch(&server, &id, json!({"name": "one"}), Some(&first)).await;
    assert_eq!(changed.status(), 200);
    let stale = patch(&server, &id, json!({"name": "two"}), Some(&first)).await;
    assert_eq!(stale.status(), 412);
    let body: serde_json::Value = stale.json().await.unwrap();
    assert_eq!(body["error"]["code"], "precondition_failed");
    assert_eq!(stored_sidecar(&server, &id).await["name"], "one");
    let any = patch(&server, &id, json!({"name": "three"}), Some("*")).await;
    assert_eq!(any.status(), 200);
    assert_eq!(stored_sidecar(&server, &id).await["name"], "three");
}

async fn concurrent_patches_from_one_version_let_exactly_one_win(backend: Backend) {
    let server = TestServer::on(backend).await;
    let id = server.upload_id(&png(12, 8)).await;
    let etag = etag_of(&server.get(&format!("/images/{id}/meta/")).await);
    let statuses: Vec<u16> = join_all((0..12).map(|n| {
        let (server, id, etag) = (&server, &id, &etag);
        async move {
            patch(
                server,
                id,
                json!({"name": format!("writer {n}")}),
                Some(etag),
            )
            .await
            .status()
            .as_u16()
        }
    }))
    .await;
    let winners: Vec<usize> = (0..12).filter(|&n| statuses[n] == 200).collect();
    assert_eq!(winners.len(), 1, "{statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 412),
        "{statuses:?}"
    );
    assert_eq!(
        stored_sidecar(&server, &id).await["name"],
        format!("writer {}", winners[0])
    );
    let leftovers: Vec<String> = server
        .stored_files()
        .await
        .into_iter()
        .filter(|key| key.starts_with("leases/"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

async fn concurrent_patches_without_if_match_all_land_one_after_another(backend: Backend) {
    let server = TestServer::on(backend).await;
    let id = server.upload_id(&png(12, 8)).await;
    // name, desc and tags change concurrently; none of the three may be lost.
    let changes = [
        json!({"name": "n"}),
        json!({"desc": "d"}),
        json!({"tags": ["t"]}),
    ];
    let statuses: Vec<u16> = join_all(changes.iter().map(|change| {
        let (server, id) = (&server, &id);
        async move {
            patch(server, id, change.clone(), None)
                .await
                .status()
                .as_u16()
        }
    }))
    .await;
    assert_eq!(statuses, vec![200, 200, 200]);
    let stored = stored_sidecar(&server, &id).await;
    assert_eq!(
        (&stored["name"], &stored["desc"], &stored["tags"]),
        (&json!("n"), &json!("d"), &json!(["t"]))
    );
}

async fn a_blob_without_a_sidecar_gets_one_on_its_first_patch(backend: Backend) {
    let server = TestServer::on(backend).await;
    let bytes = png(9, 7);
    let id = sha1_hex(&bytes);
    server.write_object(&blob_key(&id), &bytes).await;
    let etag = etag_of(&server.get(&format!("/images/{id}/meta/")).await);
    let response = patch(&server, &id, json!({"tags": ["legacy"]}), Some(&etag)).await;
    assert_eq!(response.status(), 200);
    let stored = stored_sidecar(&server, &id).await;
    assert_eq!(stored["tags"], json!(["legacy"]));
    assert_eq!(
        (stored["width"].as_u64(), stored["height"].as_u64()),
        (Some(9), Some(7))
    );
}

async fn bad_patches_are_refused_with_the_field_named(backend: Backend) {
    let server = TestServer::on(backend).await;
    let id = server.upload_id(&png(12, 8)).await;
    let before = server.read_object(&format!("{}.meta", blob_key(&id))).await;
    for (body, status, code) in [
        (json!({"width": 1}), 400, "read_only_field"),
        (json!({"file_name": "x.png"}), 400, "read_only_field"),
        (json!({"owner": "me"}), 400, "unknown_field"),
        (json!({"tags": "cats"}), 400, "invalid_field"),
        (json!({"tags": [1]}), 400, "invalid_field"),
        (json!({"name": "x".repeat(5000)}), 400, "invalid_field"),
        (json!(["name"]), 400, "invalid_json"),
    ] {
        let response = patch(&server, &id, body.clone(), None).await;
        assert_eq!(response.status(), status, "{body}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{body}");
        let message = error["error"]["message"].as_str().unwrap();
        if let Some(field) = body.as_object().and_then(|o| o.keys().next()) {
            assert!(message.contains(field.as_str()), "{message}");
        }
    }
    let url = server.url(&format!("/images/{id}/meta/"));
    let not_json = server
        .client
        .patch(&url)
        .header("content-type", "text/plain")
        .body("name=x")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 415);
    let broken = server
        .client
        .patch(&url)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), 400);
    let huge = server
        .client
        .patch(&url)
        .header("content-type", "application/json")
        .body(format!("{{\"name\": \"{}\"}}", "x".repeat(70_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    let missing = patch(&server, &"0".repeat(40), json!({"name": "x"}), None).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        server.read_object(&format!("{}.meta", blob_key(&id))).await,
        before,
        "nothing refused was written"
    );
}

async fn the_listing_filters_by_tag_with_a_cursor(backend: Backend) {
    let server = TestServer::on(backend).await;
    let mut ids = Vec::new();
    for width in 10..16 {
        ids.push(server.upload_id(&png(width, 5)).await);
    }
    let mut cats: Vec<String> = vec![ids[1].clone(), ids[3].clone(), ids[4].clone()];
    for id in &cats {
        let response = patch(&server, id, json!({"tags": ["cats", "pets"]}), None).await;
        assert_eq!(response.status(), 200);
    }
    patch(&server, &ids[0], json!({"tags": ["dogs"]}), None).await;
    cats.sort();

    let listed = |query: String| {
        let server = &server;
        async move {
            let body = server.get_json(&format!("/images/?{query}")).await;
            let ids: Vec<String> = body["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|image| {
                    assert!(image["tags"].as_array().unwrap().contains(&json!("cats")));
                    image["id"].as_str().unwrap().to_string()
                })
                .collect();
            (ids, body["next_cursor"].as_str().map(str::to_string))
        }
    };
    assert_eq!(listed("tag=cats".into()).await, (cats.clone(), None));
    let (first, cursor) = listed("tag=cats&limit=2".into()).await;
    assert_eq!(first, cats[..2]);
    let (rest, end) = listed(format!("tag=cats&limit=2&cursor={}", cursor.unwrap())).await;
    assert_eq!((rest, end), (cats[2..].to_vec(), None));
    let none = server.get_json("/images/?tag=birds").await;
    assert_eq!(none, json!({"images": [], "next_cursor": null}));
}
