//! The web page at `GET /`, driven in headless Chromium: `tests/ui/upload.mjs`
//! (Playwright, playwright-core from npm, Debian's `/usr/bin/chromium`) uploads an
//! image through the file input and by drag and drop, waits for its thumbnail, its
//! ASCII art and its place in the gallery, and saves a screenshot to
//! `target/tmp/ui-screenshot.png`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// `npm ci` in tests/ui unless playwright-core is there already.
fn ensure_playwright(dir: &Path) {
    if dir.join("node_modules/playwright-core").is_dir() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("npm runs (Node.js is needed for the browser test)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

#[tokio::test]
async fn the_page_uploads_shows_and_lists_an_image() {
    let server = TestServer::on(Backend::Filesystem).await;
    let page = server.get("/").await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"drop\"") && html.contains("id=\"gallery\""));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page loads nothing from elsewhere"
    );

    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    );
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    ensure_playwright(&ui);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("halves.jpg");
    let bytes = encode(&halves(320, 200), image::ImageFormat::Jpeg);
    std::fs::write(&image, &bytes).unwrap();
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshot.png");

    let output = tokio::process::Command::new("node")
        .arg(ui.join("upload.mjs"))
        .arg(server.url("/"))
        .arg(&image)
        .arg(&screenshot)
        .output()
        .await
        .expect("node runs");
    assert!(
        output.status.success(),
        "the browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap())
        .unwrap_or_else(|err| panic!("no JSON report ({err}): {stdout}"));
    let id = sha1_hex(&bytes);
    assert_eq!(report["id"], id.as_str());
    assert!(report["thumbnail_width"].as_u64().unwrap() > 0, "{report}");
    assert!(report["ascii_lines"].as_u64().unwrap() > 5, "{report}");
    assert!(report["gallery_items"].as_u64().unwrap() >= 1, "{report}");

    // What the page showed is what the server stored and computed.
    let stored = server.stored_files().await;
    assert!(stored.contains(&blob_key(&id)), "{stored:?}");
    assert!(
        stored
            .iter()
            .any(|key| key.contains(&format!(".e{ENGINE_VERSION}.thumbnail("))),
        "the thumbnail the page showed was cached: {stored:?}"
    );
    let png = std::fs::read(&screenshot).unwrap();
    let shot = decode(&png);
    assert!(
        shot.width() >= 800 && shot.height() >= 400,
        "a screenshot of the page"
    );
}
