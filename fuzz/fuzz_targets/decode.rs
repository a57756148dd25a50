//! Decode plus transform of arbitrary bytes, as an upload and a first GET would run
//! them: a probe, then a thumbnail and a format conversion. Errors are fine; panics,
//! hangs and huge allocations are bugs. Limits are small so each input stays fast.
#![no_main]

use libfuzzer_sys::fuzz_target;
use progimage::config::Limits;
use progimage::engine::{Engine, Presets};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_input_pixels: 4_000_000,
        max_output_pixels: 4_000_000,
        max_frames: 8,
        ..Limits::default()
    };
    let engine = Engine::new(limits, Presets::default());
    if engine.probe(data).is_err() {
        return;
    }
    for (path, query) in [("thumbnail", "size=32"), ("grayscale", "format=png")] {
        let query: Vec<(String, String)> = query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let spec = engine.spec(path, &query, None).expect("a valid spec");
        let _ = engine.render(data, &spec);
    }
});
