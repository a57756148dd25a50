//! The transform grammar: any path and query parse to a spec or a 400, never a panic,
//! and a spec always yields a cache key that is a valid file name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use progimage::config::Limits;
use progimage::engine::{Engine, Format, Presets};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = text.split_once('?').unwrap_or((text, ""));
    let pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key.to_string(), value.to_string())
        })
        .collect();
    let engine = Engine::new(Limits::default(), Presets::default());
    for accept in [None, Some("image/avif,image/webp,*/*")] {
        if let Ok(spec) = engine.spec(path, &pairs, accept) {
            let key = spec.key(Format::Jpeg);
            assert!(!key.contains('/') && key.len() <= 220, "bad cache key {key:?}");
        }
    }
});
