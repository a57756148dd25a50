//! Criterion benchmark of the engine: a 300 px wide JPEG thumbnail at q80, from
//! encoded bytes to encoded bytes, single-threaded, on the photos of the shared corpus.
//!
//! A second group times encoding the camera photo, decoded and scaled to 4000x3000
//! (12 MP), as AVIF (the engine
//! issue asks for under a second), beside JPEG at the same quality as the baseline.
//!
//! `cargo bench --bench thumbnail`. The corpus is read from `PROGIMAGE_CORPUS` (default
//! `../shared/corpus`); missing files are skipped. `bench/thumbnails.py` runs the same
//! work beside libvips and Pillow and writes BENCHMARKS.md.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use progimage::config::Limits;
use progimage::engine::encode::{avif, encode};
use progimage::engine::{Engine, Format, OutputOptions, Presets};

/// The photos the engine issue names, plus two more shapes of JPEG.
pub const FILES: &[&str] = &[
    "photo-eveningglow-2560x1600.jpg",
    "photo-storm-1920x1280.jpg",
    "photo-fujifilm-3648x2736.mpo",
    "render-volna-5120x2880-progressive.jpg",
    "webp-wood-4096x4096.webp",
    "render-cascade-3840x2160.png",
    "photo-cups-2560x1600-progressive.jpg",
    "photo-path-2560x1600-icc.jpg",
];

fn corpus() -> PathBuf {
    std::env::var_os("PROGIMAGE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"))
}

fn thumbnails(c: &mut Criterion) {
    let engine = Engine::new(Limits::default(), Presets::default());
    let query = [("w", "300"), ("format", "jpeg"), ("q", "80")]
        .map(|(k, v)| (k.to_string(), v.to_string()));
    let spec = engine.spec("thumbnail", &query, None).unwrap();
    let mut group = c.benchmark_group("thumbnail_300_q80");
    group.sample_size(20);
    for file in FILES {
        let Ok(bytes) = std::fs::read(corpus().join(file)) else {
            eprintln!("skipping {file}: not in {}", corpus().display());
            continue;
        };
        group.bench_function(*file, |b| b.iter(|| engine.render(&bytes, &spec).unwrap()));
    }
    group.finish();
}

fn encode_12mp(c: &mut Criterion) {
    let file = "photo-fujifilm-3648x2736.mpo";
    let decoded = std::fs::read(corpus().join(file)).map(|bytes| image::load_from_memory(&bytes));
    let Ok(Ok(photo)) = decoded else {
        eprintln!(
            "skipping the encoders: {file} not in {}",
            corpus().display()
        );
        return;
    };
    let image = photo.resize_exact(4000, 3000, image::imageops::FilterType::Triangle);
    let options = OutputOptions::parse(&[("q".to_string(), "80".to_string())], None).unwrap();
    let mut group = c.benchmark_group("encode_12mp_q80");
    group.sample_size(10);
    for format in [Format::Jpeg, Format::Avif] {
        let name = match format {
            Format::Avif => format!("avif ({})", avif::encoder_name()),
            other => other.to_string(),
        };
        group.bench_function(name, |b| {
            b.iter(|| encode(&image, format, &options).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, thumbnails, encode_12mp);
criterion_main!(benches);
