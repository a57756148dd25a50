//! The API is what `/openapi.json` says: schemathesis generates requests from the
//! spec (examples, boundary values, random data and stateful sequences such as
//! upload-then-fetch) and checks every response's status, headers, content type and
//! body against it, and that nothing answers with a 5xx.
//!
//! `tests/schemathesis.toml` says which checks are left out where, and why.

mod common;

use common::*;

/// The schemathesis release the suite is checked with.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

async fn schemathesis(server: &TestServer, examples: u32) {
    ensure_python_module("schemathesis", SCHEMATHESIS);
    let spec = server.get("/openapi.json").await;
    assert_eq!(spec.headers()["content-type"], "application/json");
    let parsed: serde_json::Value = spec.json().await.unwrap();
    assert_eq!(parsed["openapi"], "3.1.0");

    let output = tokio::process::Command::new("python3")
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/schemathesis.toml"
        ))
        .arg("run")
        .arg(server.url("/openapi.json"))
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", &examples.to_string()])
        .args(["--request-timeout", "30"])
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found responses the spec does not describe:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report.contains("Tested: 26"),
        "every operation was tested:\n{report}"
    );
}

#[tokio::test]
async fn an_open_server_answers_as_its_spec_says() {
    let server = TestServer::on(Backend::Filesystem).await;
    schemathesis(&server, 40).await;
}

#[tokio::test]
async fn a_server_with_keys_and_signatures_answers_as_its_spec_says() {
    let server = TestServer::on_with(Backend::Filesystem, |settings| {
        settings.access.api_keys = vec!["key".into()];
        settings.access.signing_key = "secret".into();
    })
    .await;
    schemathesis(&server, 20).await;
}
