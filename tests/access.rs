//! Access control: API keys for writes (and reads when private), and signed
//! transform URLs. The rules do not depend on the store, so these run on one.

mod common;

use common::*;
use progimage::signing::Signer;
use serde_json::json;

const KEYS: [&str; 2] = ["old-key-0123", "new-key-4567"];

async fn keyed_server(private: bool) -> TestServer {
    TestServer::on_with(Backend::Filesystem, |settings| {
        settings.access.api_keys = KEYS.iter().map(|k| k.to_string()).collect();
        settings.access.private = private;
    })
    .await
}

async fn error_code(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap();
    body["error"]["code"].as_str().unwrap().to_string()
}

fn upload_request(server: &TestServer, bytes: Vec<u8>) -> reqwest::RequestBuilder {
    server
        .client
        .post(server.url("/"))
        .header("content-type", "image/png")
        .body(bytes)
}

#[tokio::test]
async fn writes_need_one_of_the_keys() {
    let server = keyed_server(false).await;
    let anonymous = upload_request(&server, png(10, 10)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_code(anonymous).await, "unauthorized");
    let wrong = upload_request(&server, png(10, 10))
        .bearer_auth("old-key-012")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    assert_eq!(error_code(wrong).await, "forbidden");
    let basic = upload_request(&server, png(10, 10))
        .basic_auth("user", Some(KEYS[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    assert!(
        server.stored_files().await.is_empty(),
        "nothing refused is stored"
    );

    // Either key works: rotation.
    let mut ids = Vec::new();
    for (key, width) in KEYS.iter().zip([10, 11]) {
        let response = upload_request(&server, png(width, 10))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{key}");
        ids.push(sha1_hex(&png(width, 10)));
    }
    let id = &ids[0];

    // Reads stay public.
    assert_eq!(server.get(&format!("/images/{id}/")).await.status(), 200);
    assert_eq!(
        server.get(&format!("/images/{id}/meta/")).await.status(),
        200
    );
    assert_eq!(server.get("/images/").await.status(), 200);
    let cache_control =
        server.get(&format!("/images/{id}/")).await.headers()["cache-control"].clone();
    assert!(cache_control.to_str().unwrap().starts_with("public"));

    // Deletes, metadata changes and on-demand work need a key.
    let url = server.url(&format!("/images/{id}/"));
    let delete = server.client.delete(&url).send().await.unwrap();
    assert_eq!(delete.status(), 401);
    let meta = server.url(&format!("/images/{id}/meta/"));
    let patch = server
        .client
        .patch(&meta)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 401);
    let on_demand = server
        .client
        .post(server.url("/on_demand/thumbnail/"))
        .header("content-type", "image/png")
        .body(png(10, 10))
        .send()
        .await
        .unwrap();
    assert_eq!(on_demand.status(), 401);
    assert_eq!(
        server.stored_files().await.len(),
        4,
        "two blobs, two sidecars"
    );

    let patch = server
        .client
        .patch(&meta)
        .bearer_auth(KEYS[1])
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 200);
    let delete = server
        .client
        .delete(&url)
        .bearer_auth(KEYS[0])
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 204);
    assert_eq!(server.get(&format!("/images/{id}/")).await.status(), 404);
}

#[tokio::test]
async fn a_private_server_needs_a_key_to_read_and_is_not_cached_publicly() {
    let server = keyed_server(true).await;
    let bytes = png(10, 10);
    let id = sha1_hex(&bytes);
    let uploaded = upload_request(&server, bytes)
        .bearer_auth(KEYS[0])
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 201);
    for path in [
        format!("/images/{id}/"),
        format!("/images/{id}/meta/"),
        format!("/images/{id}/thumbnail/"),
        format!("/images/{id}.webp"),
        "/images/".to_string(),
    ] {
        let response = server.get(&path).await;
        assert_eq!(response.status(), 401, "{path}");
    }
    assert_eq!(
        server.stored_files().await.len(),
        2,
        "no transform was computed for anonymous readers"
    );
    let read = server
        .client
        .get(server.url(&format!("/images/{id}/thumbnail/")))
        .bearer_auth(KEYS[1])
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let cache_control = read.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cache_control.starts_with("private"), "{cache_control}");
    // The page, the spec, the catalogue and the probes stay open.
    for path in [
        "/",
        "/openapi.json",
        "/transforms/",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert_eq!(server.get(path).await.status(), 200, "{path}");
    }
}

async fn signed_server() -> TestServer {
    TestServer::on_with(Backend::Filesystem, |settings| {
        settings.access.signing_key = "s3cret".into();
        settings.access.api_keys = vec![KEYS[0].into()];
        settings
            .presets
            .insert("avatar".into(), "thumbnail(size=16)".into());
        settings.access.public_presets = vec!["avatar".into()];
    })
    .await
}

#[tokio::test]
async fn transform_urls_need_a_valid_signature() {
    let server = signed_server().await;
    let bytes = png(64, 32);
    let id = sha1_hex(&bytes);
    upload_request(&server, bytes)
        .bearer_auth(KEYS[0])
        .send()
        .await
        .unwrap();
    let stored_before = server.stored_files().await;

    let path = format!("/images/{id}/thumbnail/?w=20");
    let unsigned = server.get(&path).await;
    assert_eq!(unsigned.status(), 403);
    assert_eq!(error_code(unsigned).await, "signature_required");

    let signed = Signer::new("s3cret").signed_url(&path);
    let response = server.get(&signed).await;
    assert_eq!(response.status(), 200, "{signed}");
    let image = decode(&response.bytes().await.unwrap());
    assert_eq!((image.width(), image.height()), (20, 10));

    // The same signature on other parameters, or from another key, is refused.
    let tampered = signed.replace("w=20", "w=21");
    let response = server.get(&tampered).await;
    assert_eq!(response.status(), 403);
    assert_eq!(error_code(response).await, "signature_invalid");
    let forged = Signer::new("guess").signed_url(&format!("/images/{id}/thumbnail/?w=22"));
    assert_eq!(server.get(&forged).await.status(), 403);
    let converted = server.get(&format!("/images/{id}.webp")).await;
    assert_eq!(converted.status(), 403, "conversions are transforms too");
    let stored: Vec<String> = server.stored_files().await;
    assert_eq!(
        stored.len(),
        stored_before.len() + 1,
        "only the signed transform was computed: {stored:?}"
    );

    // Public presets and keyed requests need no signature; originals never do.
    let avatar = server.get(&format!("/images/{id}/avatar/")).await;
    assert_eq!(avatar.status(), 200);
    let keyed = server
        .client
        .get(server.url(&format!("/images/{id}/grayscale/")))
        .bearer_auth(KEYS[0])
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), 200);
    assert_eq!(server.get(&format!("/images/{id}/")).await.status(), 200);
}

#[tokio::test]
async fn progimage_sign_prints_a_url_the_server_accepts() {
    let server = signed_server().await;
    let bytes = png(40, 40);
    let id = sha1_hex(&bytes);
    upload_request(&server, bytes)
        .bearer_auth(KEYS[0])
        .send()
        .await
        .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_progimage"))
        .args(["sign", &format!("/images/{id}/resize/?w=12&format=png")])
        .env("PROGIMAGE_SIGNING_KEY", "s3cret")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let url = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(url.contains("&sig="), "{url}");
    let response = server.get(&url).await;
    assert_eq!(response.status(), 200, "{url}");
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(decode(&response.bytes().await.unwrap()).width(), 12);

    let without_key = std::process::Command::new(env!("CARGO_BIN_EXE_progimage"))
        .args(["sign", "/images/x/thumbnail/"])
        .env_remove("PROGIMAGE_SIGNING_KEY")
        .output()
        .unwrap();
    assert!(!without_key.status.success());
    assert!(String::from_utf8_lossy(&without_key.stderr).contains("signing key"));
}
