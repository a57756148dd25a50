//! The upload parser: arbitrary bodies as multipart forms (with a fixed boundary) and
//! as raw image bodies, read as `POST /` reads them. Errors are fine; panics are bugs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = bytes::Bytes::copy_from_slice(data);
    runtime.block_on(async {
        for content_type in ["multipart/form-data; boundary=XyZ", "image/png"] {
            let _ = progimage::http::fuzz_read_upload(content_type, body.clone()).await;
        }
    });
});
