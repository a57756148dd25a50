//! One file's 300 px JPEG thumbnail, timed, for `bench/thumbnails.py`: prints the
//! median wall time over the runs, this process's peak resident memory and its
//! resident memory before the first run, as JSON.
//!
//! `cargo run --release --example thumbnail_timing -- <image> <runs> <output.jpg>`

use std::time::Instant;

use progimage::config::Limits;
use progimage::engine::{Engine, Presets};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, runs, output] = args.as_slice() else {
        eprintln!("usage: thumbnail_timing <image> <runs> <output.jpg>");
        std::process::exit(2);
    };
    let bytes = std::fs::read(input).expect("readable input");
    let runs: usize = runs.parse().expect("a number of runs");
    let engine = Engine::new(Limits::default(), Presets::default());
    let query = [("w", "300"), ("format", "jpeg"), ("q", "80")]
        .map(|(k, v)| (k.to_string(), v.to_string()));
    let spec = engine.spec("thumbnail", &query, None).unwrap();
    let start_rss_kb = status_kb("VmRSS:");
    let mut times = Vec::with_capacity(runs);
    let mut result = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        result = engine.render(&bytes, &spec).expect("thumbnail").bytes;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    std::fs::write(output, &result).expect("writable output");
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"median_ms\": {:.3}, \"peak_rss_kb\": {}, \"start_rss_kb\": {start_rss_kb}}}",
        times[times.len() / 2],
        status_kb("VmHWM:"),
    );
}

/// A kB field of /proc/self/status: VmRSS (resident now), VmHWM (the most so far).
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
