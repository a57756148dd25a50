//! What only the S3 backend does: multipart uploads of large objects, and
//! `progimage migrate` from a directory into a bucket.

mod common;

use std::process::Command;

use common::{assert_consistent, blob_key, noise_png, sha1_hex, Backend, TestServer};

#[tokio::test]
async fn large_uploads_go_up_in_parts() {
    let mib = 1024 * 1024;
    let server = TestServer::on_with(Backend::S3, |settings| {
        settings.s3.multipart_threshold_bytes = 5 * mib;
        settings.s3.multipart_part_bytes = 5 * mib;
    })
    .await;
    let bytes = noise_png(1400, 1400); // about 5.6 MiB: two parts
    assert!(bytes.len() as u64 > 5 * mib);
    let reply = server.upload(&bytes).await;
    let id = sha1_hex(&bytes);
    assert_eq!(reply["id"], id);
    let original = server.get(&format!("/images/{id}/")).await;
    assert_eq!(original.bytes().await.unwrap(), bytes);
    // S3 gives a multipart object the ETag "<md5 of the part md5s>-<part count>".
    let raw = reqwest::Client::new()
        .head(format!(
            "{}/{}/{}",
            common::s3::shared().endpoint(),
            server.store_url.trim_start_matches("s3://"),
            blob_key(&id)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
    let etag = raw.headers()["etag"].to_str().unwrap();
    assert!(etag.trim_matches('"').ends_with("-2"), "ETag {etag}");
    // Small objects beside it are single PUTs.
    assert_eq!(assert_consistent(&server.store).await, vec![id]);
}

#[tokio::test]
async fn migrate_copies_a_directory_store_into_a_bucket_and_resumes() {
    let source = TestServer::on(Backend::Filesystem).await;
    let images = [noise_png(50, 40), noise_png(60, 40)];
    for image in &images {
        source.upload(image).await;
    }
    let id = sha1_hex(&images[0]);
    let thumbnail = source.get_bytes(&format!("/images/{id}/thumbnail/")).await;
    let objects = source.stored_files().await;
    assert_eq!(objects.len(), 5, "two blobs, two sidecars, one transform");

    let destination = common::s3::fresh_store_url();
    let migrate = || {
        let output = Command::new(env!("CARGO_BIN_EXE_progimage"))
            .args(["migrate", "--from", &source.store_url, "--to", &destination])
            .envs(common::s3::shared().env())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(
        migrate().trim(),
        format!(
            "copied 5 objects ({} bytes), skipped 0 already there, 0 failed",
            source_bytes(&source).await
        )
    );
    assert_eq!(
        migrate().trim(),
        "copied 0 objects (0 bytes), skipped 5 already there, 0 failed"
    );

    let served = TestServer::on_with(Backend::S3, |settings| {
        settings.store = destination.clone();
    })
    .await;
    assert_eq!(served.stored_files().await, objects);
    let original = served.get(&format!("/images/{id}/")).await;
    assert_eq!(original.bytes().await.unwrap(), images[0]);
    let cached = served.get(&format!("/images/{id}/thumbnail/")).await;
    assert_eq!(cached.headers()["x-cache"], "HIT");
    assert_eq!(cached.bytes().await.unwrap(), thumbnail);
}

async fn source_bytes(server: &TestServer) -> u64 {
    let mut total = 0;
    for key in server.stored_files().await {
        total += server.read_object(&key).await.unwrap().len() as u64;
    }
    total
}
