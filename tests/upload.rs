//! Uploads over HTTP: content addressing, the store layout, duplicates, form fields.

mod common;

use common::*;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;

#[tokio::test]
async fn multipart_upload_is_stored_under_its_sha1() {
    let server = TestServer::start().await;
    let bytes = jpeg(256, 192);
    let id = sha1_hex(&bytes);
    let form = Form::new()
        .part("image", Part::bytes(bytes.clone()).file_name("cat.jpg"))
        .text("name", "Cat")
        .text("desc", "A red and blue cat");
    let response = server.post_form("/", form).await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(location, format!("{}/images/{id}/", server.base));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["id"], id);
    assert_eq!(body["msg"], "ok");
    assert_eq!(body["url"], location);
    assert_eq!(body["format"], "jpeg");
    assert_eq!(
        (body["width"].as_u64(), body["height"].as_u64()),
        (Some(256), Some(192))
    );
    assert_eq!(body["bytes"].as_u64(), Some(bytes.len() as u64));
    assert_eq!(body["content_type"], "image/jpeg");

    assert_eq!(std::fs::read(server.object(&blob_key(&id))).unwrap(), bytes);
    let sidecar: serde_json::Value = serde_json::from_slice(
        &std::fs::read(server.object(&format!("{}.meta", blob_key(&id)))).unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["file_name"], "cat.jpg");
    assert_eq!(sidecar["name"], "Cat");
    assert_eq!(sidecar["desc"], "A red and blue cat");
    assert_eq!(sidecar["width"], 256);
    assert!(sidecar["created"].as_str().unwrap().starts_with("20"));
    assert_eq!(
        server.stored_files(),
        vec![blob_key(&id), format!("{}.meta", blob_key(&id))]
    );
}

#[tokio::test]
async fn raw_body_upload_works_on_both_upload_paths() {
    let server = TestServer::start().await;
    for (path, bytes) in [("/", png(10, 10)), ("/images/", png(12, 10))] {
        let response = server.post_raw(path, "image/png", bytes.clone()).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["id"], sha1_hex(&bytes));
        assert_eq!(body["content_type"], "image/png");
        assert_eq!(
            std::fs::read(server.object(&blob_key(&sha1_hex(&bytes)))).unwrap(),
            bytes
        );
    }
}

#[tokio::test]
async fn duplicate_upload_is_200_with_the_same_answer_and_writes_nothing() {
    let server = TestServer::start().await;
    let bytes = jpeg(64, 48);
    let id = sha1_hex(&bytes);
    let first = server
        .client
        .post(server.url("/"))
        .multipart(Form::new().part("image", Part::bytes(bytes.clone()).file_name("a.jpg")))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_location = first.headers()["location"].clone();
    let first_body: serde_json::Value = first.json().await.unwrap();
    let sidecar_path = server.object(&format!("{}.meta", blob_key(&id)));
    let sidecar_before = std::fs::read(&sidecar_path).unwrap();
    let modified_before = std::fs::metadata(server.object(&blob_key(&id)))
        .unwrap()
        .modified()
        .unwrap();

    let second = server
        .client
        .post(server.url("/"))
        .multipart(Form::new().part("image", Part::bytes(bytes.clone()).file_name("b.jpg")))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(second.headers()["location"], first_location);
    let second_body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(second_body, first_body);
    assert_eq!(std::fs::read(&sidecar_path).unwrap(), sidecar_before);
    assert_eq!(
        std::fs::metadata(server.object(&blob_key(&id)))
            .unwrap()
            .modified()
            .unwrap(),
        modified_before
    );
    assert_eq!(server.stored_files().len(), 2);
}

#[tokio::test]
async fn a_form_without_the_image_field_is_400_naming_it() {
    let server = TestServer::start().await;
    let form = Form::new().part("imageX", Part::bytes(jpeg(8, 8)).file_name("a.jpg"));
    let response = server.post_form("/", form).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_image_field");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'image'"),
        "{body}"
    );
    assert!(server.stored_files().is_empty());
}

#[tokio::test]
async fn location_follows_forwarded_headers_or_the_public_url() {
    let server = TestServer::start().await;
    let bytes = jpeg(8, 8);
    let id = sha1_hex(&bytes);
    let response = server
        .client
        .post(server.url("/"))
        .header("content-type", "image/jpeg")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "img.example.com")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["location"],
        format!("https://img.example.com/images/{id}/").as_str()
    );

    let configured =
        TestServer::start_with(|s| s.public_url = "https://cdn.example.org/".into()).await;
    let response = configured.post_raw("/", "image/jpeg", bytes).await;
    assert_eq!(
        response.headers()["location"],
        format!("https://cdn.example.org/images/{id}/").as_str()
    );
}

#[tokio::test]
async fn concurrent_identical_uploads_leave_one_blob_and_one_sidecar() {
    let server = TestServer::start().await;
    let bytes = jpeg(300, 200);
    let id = sha1_hex(&bytes);
    let uploads = (0..8).map(|_| {
        let request = server
            .client
            .post(server.url("/"))
            .header("content-type", "image/jpeg")
            .body(bytes.clone());
        async move { request.send().await.unwrap() }
    });
    let responses = futures::future::join_all(uploads).await;
    let created = responses
        .iter()
        .filter(|r| r.status() == StatusCode::CREATED)
        .count();
    assert!(responses.iter().all(|r| r.status().is_success()));
    assert_eq!(created, 1, "exactly one upload creates the blob");
    assert_eq!(
        server.stored_files(),
        vec![blob_key(&id), format!("{}.meta", blob_key(&id))]
    );
}
