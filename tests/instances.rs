//! Several `progimage serve` processes on one store, as behind a load balancer: what
//! one stores the other serves at once, duplicate uploads and transforms converge on
//! one object, a new transform is computed once however many ask for it when leases
//! are taken first, a long computation's lease makes the others wait for it, and a
//! delete through one is seen by the other.

mod common;

use common::{
    assert_consistent, blob_key, derived_marker, noise_png, on_shared_stores, sha1_hex,
    slow_source, slow_transform, stored_keys, Backend, SharedStore,
};
use std::time::Duration;

use futures::future::join_all;

on_shared_stores!(
    an_upload_through_one_is_served_by_the_other,
    concurrent_uploads_of_the_same_bytes_leave_one_blob_and_one_sidecar,
    a_new_transform_is_computed_once_across_instances,
    a_long_computation_takes_a_lease_the_other_instance_waits_for,
    a_delete_through_one_reaches_what_the_other_holds_in_memory,
);

async fn an_upload_through_one_is_served_by_the_other(backend: Backend) {
    let shared = SharedStore::new(backend);
    let (a, b) = (shared.spawn_instance(), shared.spawn_instance());
    let client = reqwest::Client::new();
    let bytes = noise_png(64, 48);
    let uploaded = a.upload_png(&client, bytes.clone()).await;
    assert_eq!(uploaded.status(), 201);
    let id = sha1_hex(&bytes);

    let original = client
        .get(b.url(&format!("/images/{id}/")))
        .send()
        .await
        .unwrap();
    assert_eq!(original.status(), 200);
    assert_eq!(original.headers()["content-type"], "image/png");
    assert_eq!(original.bytes().await.unwrap(), bytes);
    let meta: serde_json::Value = client
        .get(b.url(&format!("/images/{id}/meta/")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (meta["width"].as_u64(), meta["height"].as_u64()),
        (Some(64), Some(48))
    );
}

async fn concurrent_uploads_of_the_same_bytes_leave_one_blob_and_one_sidecar(backend: Backend) {
    let shared = SharedStore::new(backend);
    let instances = [shared.spawn_instance(), shared.spawn_instance()];
    let client = reqwest::Client::new();
    let bytes = noise_png(200, 100);
    let uploads = (0..20).map(|n| instances[n % 2].upload_png(&client, bytes.clone()));
    for response in join_all(uploads).await {
        assert!(response.status().is_success(), "{}", response.status());
        let reply: serde_json::Value = response.json().await.unwrap();
        assert_eq!(reply["id"], sha1_hex(&bytes));
    }
    let id = sha1_hex(&bytes);
    assert_eq!(assert_consistent(&shared.store).await, vec![id.clone()]);
    let keys = stored_keys(&shared.store).await;
    assert_eq!(keys, vec![blob_key(&id), format!("{}.meta", blob_key(&id))]);
    // Both instances describe it with the one sidecar that won.
    let metas = join_all(instances.iter().map(|instance| async {
        client
            .get(instance.url(&format!("/images/{id}/meta/")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }))
    .await;
    assert_eq!(metas[0], metas[1]);
}

/// With `transform_lease_after_ms = 0`, every miss takes the lease before computing.
async fn a_new_transform_is_computed_once_across_instances(backend: Backend) {
    let shared = SharedStore::new(backend);
    let settings = tempfile::tempdir().unwrap();
    let lease_first = "transform_lease_after_ms = 0\n";
    let instances = [
        shared.spawn_instance_with(&settings, lease_first),
        shared.spawn_instance_with(&settings, lease_first),
    ];
    let client = reqwest::Client::new();
    let bytes = noise_png(1200, 900);
    let id = instances[0].upload_id(&client, bytes).await;
    let path = format!("/images/{id}/resize(w=700)/grayscale/?format=png");
    let requests = (0..100).map(|n| {
        let url = instances[n % 2].url(&path);
        let client = client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let cache = response.headers()["x-cache"].to_str().unwrap().to_string();
            (cache, response.bytes().await.unwrap())
        }
    });
    let responses = join_all(requests).await;
    let computed = responses
        .iter()
        .filter(|(cache, _)| cache == "MISS")
        .count();
    assert_eq!(
        computed,
        1,
        "X-Cache of the 100 responses: {:?}",
        caches(&responses)
    );
    let listed = stored_keys(&shared.store).await;
    let derived: Vec<&String> = listed
        .iter()
        .filter(|key| key.contains(&derived_marker()))
        .collect();
    assert_eq!(derived.len(), 1, "one cached transform: {listed:?}");
    let stored = shared
        .store
        .read(&derived[0].as_str().into())
        .await
        .unwrap();
    let stored = stored.expect("the transform is cached under its key");
    for (cache, body) in &responses {
        assert_eq!(
            body, &stored,
            "a {cache} response differs from the cached object"
        );
    }
    let image = image::load_from_memory(&stored).unwrap();
    assert_eq!((image.width(), image.height()), (700, 525));
    // One blob, its sidecar, one cached transform, and no lease left behind.
    assert_eq!(assert_consistent(&shared.store).await, vec![id]);
}

/// By default a miss takes its lease once it has computed for 100 ms: here 1 ms, and a
/// transform that takes far longer. Once the lease is in the store, the other instance
/// waits for that computation instead of starting its own.
async fn a_long_computation_takes_a_lease_the_other_instance_waits_for(backend: Backend) {
    let shared = SharedStore::new(backend);
    let settings = tempfile::tempdir().unwrap();
    let soon = "transform_lease_after_ms = 1\n";
    let (a, b) = (
        shared.spawn_instance_with(&settings, soon),
        shared.spawn_instance_with(&settings, soon),
    );
    let client = reqwest::Client::new();
    let id = a.upload_id(&client, slow_source()).await;
    let path = slow_transform(&id, 2);
    let first = tokio::spawn({
        let (client, url) = (client.clone(), a.url(&path));
        async move { client.get(url).send().await.unwrap() }
    });
    let started = std::time::Instant::now();
    let lease = loop {
        let leases: Vec<String> = stored_keys(&shared.store)
            .await
            .into_iter()
            .filter(|key| key.starts_with("leases/"))
            .collect();
        if let [lease] = leases.as_slice() {
            break lease.clone();
        }
        assert!(
            !first.is_finished() && started.elapsed() < Duration::from_secs(20),
            "no lease appeared while the first instance computed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert!(lease.contains(&id), "{lease}");
    let second = client.get(b.url(&path)).send().await.unwrap();
    let first = first.await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    assert_eq!(first.headers()["x-cache"], "MISS");
    // It waited for the lease holder's result, or found it stored if that came first.
    let waited = second.headers()["x-cache"].to_str().unwrap().to_string();
    assert!(waited == "COALESCED" || waited == "HIT", "{waited}");
    assert_eq!(first.bytes().await.unwrap(), second.bytes().await.unwrap());
    let metrics = client.get(a.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line == "progimage_transform_leases_total 1"),
        "{metrics}"
    );
    // One cached transform, and the lease released.
    assert_eq!(assert_consistent(&shared.store).await, vec![id]);
    let derived = stored_keys(&shared.store)
        .await
        .into_iter()
        .filter(|key| key.contains(&derived_marker()))
        .count();
    assert_eq!(derived, 1);
}

/// The other instance holds the thumbnail in its hot cache; once it has trusted the
/// image's source for `hot_cache_source_secs`, it reads the sidecar again and finds
/// the image gone.
async fn a_delete_through_one_reaches_what_the_other_holds_in_memory(backend: Backend) {
    let shared = SharedStore::new(backend);
    let settings = tempfile::tempdir().unwrap();
    let (a, b) = (
        shared.spawn_instance(),
        shared.spawn_instance_with(&settings, "hot_cache_source_secs = 1\n"),
    );
    let client = reqwest::Client::new();
    let id = a.upload_id(&client, noise_png(300, 200)).await;
    let thumbnail = b.url(&format!("/images/{id}/thumbnail/?w=50"));
    for expected in ["MISS", "HIT"] {
        let response = client.get(&thumbnail).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-cache"], expected);
    }
    let deleted = client
        .delete(a.url(&format!("/images/{id}/")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let gone = client.get(&thumbnail).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    let body: serde_json::Value = gone.json().await.unwrap();
    assert_eq!(body["error"]["code"], "image_not_found", "{body}");
    assert!(stored_keys(&shared.store).await.is_empty());
}

fn caches(responses: &[(String, bytes::Bytes)]) -> Vec<&str> {
    responses.iter().map(|(cache, _)| cache.as_str()).collect()
}
