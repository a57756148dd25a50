//! The image engine: bytes in, bytes out. It knows pixels, not HTTP or stores.
//!
//! A request for a transform becomes a [`TransformSpec`] (the transform with its
//! validated parameters plus the output format and quality). Its [`key`] is the
//! canonical name of the result, used as the cache key. [`Engine::render`] runs
//! probe, decode (upright), the operation and the encoder, and is CPU-bound: callers
//! run it on a blocking thread.
//!
//! [`key`]: TransformSpec::key

mod animation;
mod color;
pub mod decode;
pub mod encode;
mod format;
pub mod ops;
pub mod output;
pub mod params;
pub mod pipeline;
mod probe;
pub mod resize;

pub use format::Format;
pub use output::OutputOptions;
pub use pipeline::{Pipeline, Presets};
pub use probe::Probe;

use sha1::Digest;

use crate::config::Limits;
use crate::error::{Error, Result};
use ops::{Output, Produces};

/// Bumped whenever a change to the engine changes its output, so cached results from
/// an older engine are never served as the new one's: the version is in every key.
pub const ENGINE_VERSION: u32 = 4;

/// The longest cache key kept readable; `<id>.<key>` must stay under 255 bytes.
pub const MAX_READABLE_KEY: usize = 200;

/// A transform request, validated: the pipeline to run and how to encode its result.
#[derive(Debug)]
pub struct TransformSpec {
    pipeline: Pipeline,
    output: OutputOptions,
}

/// The format a result is encoded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Image(Format),
    /// Text with its file extension (`txt`, `html`).
    Text(&'static str),
}

/// An encoded result and its media type.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub content_type: String,
}

impl TransformSpec {
    /// Parses the pipeline part of a path (`thumbnail`, `crop(aspect=1:1)/grayscale`)
    /// and the query string: output options (`format`, `q`, ...) and, for a single
    /// step, its parameters. `accept` is the request's `Accept`, for `format=auto`.
    pub fn parse(
        path: &str,
        query: &[(String, String)],
        presets: &Presets,
        accept: Option<&str>,
    ) -> Result<Self> {
        let (output, params): (Vec<_>, Vec<_>) = query
            .iter()
            .cloned()
            .partition(|(name, _)| OutputOptions::owns(name));
        let pipeline = Pipeline::parse(path, &params, presets)?;
        if pipeline.produces() == Produces::Text && !output.is_empty() {
            return Err(Error::bad_request(
                "invalid_parameter",
                format!(
                    "'{path}' produces text: output options ({}) do not apply",
                    output
                        .iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(Self {
            pipeline,
            output: OutputOptions::parse(&output, accept)?,
        })
    }

    /// The original image re-encoded as `format` (`GET /images/<id>.png`).
    pub fn convert_to(format: Format) -> Result<Self> {
        let query = [("format".to_string(), format.name().to_string())];
        Self::parse("convert", &query, &Presets::default(), None)
    }

    /// The step names without parameters, e.g. `crop/resize`: a label for metrics
    /// whose values stay few however many parameter combinations are asked for.
    pub fn label(&self) -> String {
        self.pipeline
            .steps()
            .iter()
            .map(|step| step.key().split('(').next().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Whether the result depends on the request's `Accept` header (`format=auto`).
    pub fn varies_with_accept(&self) -> bool {
        self.output.varies_with_accept()
    }

    /// The output format for a source of format `source`.
    pub fn output_format(&self, source: Format) -> OutputFormat {
        match self.pipeline.produces() {
            Produces::Text => OutputFormat::Text(self.pipeline.text_extension()),
            Produces::Image => OutputFormat::Image(self.output.resolve(source)),
        }
    }

    /// The canonical key of this result for a source of format `source`, e.g.
    /// `e4.thumbnail(w=128,h=128).q80.jpeg`: engine version, the pipeline with every
    /// parameter resolved, the output options that change the bytes, and the format
    /// as extension. A key over [`MAX_READABLE_KEY`] bytes (a long pipeline) becomes
    /// `e4.sha1-<hex of the readable key>.<extension>`, which fits every store's name
    /// limit (255 bytes per file name on most filesystems, with the id in front).
    pub fn key(&self, source: Format) -> String {
        let pipeline = self.pipeline.key();
        let (readable, extension) = match self.output_format(source) {
            OutputFormat::Text(extension) => (
                format!("e{ENGINE_VERSION}.{pipeline}.{extension}"),
                extension.to_string(),
            ),
            OutputFormat::Image(format) => match self.output.key_suffix(format) {
                suffix if suffix.is_empty() => (
                    format!("e{ENGINE_VERSION}.{pipeline}.{format}"),
                    format.to_string(),
                ),
                suffix => (
                    format!("e{ENGINE_VERSION}.{pipeline}.{suffix}.{format}"),
                    format.to_string(),
                ),
            },
        };
        if readable.len() <= MAX_READABLE_KEY {
            return readable;
        }
        let digest: String = sha1::Sha1::digest(&readable)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        format!("e{ENGINE_VERSION}.sha1-{digest}.{extension}")
    }
}

/// The media type of a stored result, from the extension its key ends with.
pub fn content_type_of_key(key: &str) -> String {
    let mime = mime_guess::from_path(key).first_or_octet_stream();
    if mime.type_() == mime_guess::mime::TEXT {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    }
}

/// The engine with its limits. Cheap to clone; every method is synchronous and
/// CPU-bound.
#[derive(Debug, Clone)]
pub struct Engine {
    limits: Limits,
    presets: Presets,
}

impl Engine {
    pub fn new(limits: Limits, presets: Presets) -> Self {
        Self { limits, presets }
    }

    /// Parses a transform request against this engine's presets.
    pub fn spec(
        &self,
        path: &str,
        query: &[(String, String)],
        accept: Option<&str>,
    ) -> Result<TransformSpec> {
        TransformSpec::parse(path, query, &self.presets, accept)
    }

    /// Every transform with its parameters, the output options, the formats and the
    /// presets: what `GET /transforms/` shows.
    pub fn catalogue(&self) -> serde_json::Value {
        let transforms: Vec<_> = ops::ALL
            .iter()
            .map(|d| {
                serde_json::json!({
                    "name": d.name,
                    "summary": d.summary,
                    "produces": match d.produces { Produces::Image => "image", Produces::Text => "text" },
                    "params": d.params,
                })
            })
            .collect();
        let names = |keep: fn(&Format) -> bool| -> Vec<&str> {
            Format::ALL
                .iter()
                .filter(|f| keep(f))
                .map(|f| f.name())
                .collect()
        };
        serde_json::json!({
            "engine_version": ENGINE_VERSION,
            "transforms": transforms,
            "output_params": output::OUTPUT_PARAMS,
            "input_formats": names(|f| f.is_readable()),
            "output_formats": names(|_| true),
            "presets": self.presets.describe(),
            "pipeline_max_steps": pipeline::MAX_STEPS,
        })
    }

    /// The most memory running `spec` on `bytes` holds at once, from the header (see
    /// [`Engine::estimated_memory`]). 0 for a header that does not parse: decoding
    /// will refuse it before allocating anything.
    pub fn working_memory(&self, bytes: &[u8], spec: &TransformSpec) -> u64 {
        let Some(format) = Format::sniff(bytes) else {
            return 0;
        };
        probe::header_size(format, bytes).ok().map_or(0, |size| {
            let progressive = format == Format::Jpeg && decode::is_progressive_jpeg(bytes);
            self.estimated_memory(format, size, Some(progressive), spec)
        })
    }

    /// The memory budget's estimate for running `spec` on a `format` image of `size`
    /// (as stored): the decoded image after shrink-on-load and the largest image a step
    /// makes, 8 bytes a pixel each (an RGBA copy and a working copy), and for a
    /// progressive JPEG libjpeg's whole-image coefficients (3 bytes a pixel at 4:2:0;
    /// 6 counted, for 4:4:4), for AVIF input the AV1 decoder's frame and libavif's RGBA
    /// (8 bytes a pixel counted), and for AVIF output the AV1 encoder's own frame copies
    /// (14-17 bytes a pixel measured with libaom and rav1e on a 10 MP photo; 16
    /// counted). `progressive: None` (not known yet) counts them for any JPEG. The EXIF
    /// orientation is not known here either, so both are assumed and the larger taken.
    /// A reservation, not a measurement: it errs high.
    pub fn estimated_memory(
        &self,
        format: Format,
        (width, height): (u32, u32),
        progressive: Option<bool>,
        spec: &TransformSpec,
    ) -> u64 {
        let pipeline = &spec.pipeline;
        let decoded = |upright: (u32, u32), turned: bool| {
            let needed = match pipeline.plan(upright, u64::MAX) {
                Ok(needed) => needed.map(|(w, h)| if turned { (h, w) } else { (w, h) }),
                Err(_) => None,
            };
            decode::decoded_pixels(format, (width, height), needed)
                + pipeline.largest_output(upright)
        };
        let pixels = decoded((width, height), false).max(decoded((height, width), true));
        let coefficients = match (format, progressive) {
            (Format::Jpeg, Some(true) | None) => u64::from(width) * u64::from(height) * 6,
            // The AV1 decoder's YUV frame and libavif's RGBA before it is copied.
            (Format::Avif, _) => u64::from(width) * u64::from(height) * 8,
            _ => 0,
        };
        let encoder = match spec.output.resolve(format) {
            Format::Avif => pipeline.largest_output((width, height)) * 16,
            _ => 0,
        };
        pixels * 8 + coefficients + encoder
    }

    /// The size a probed image shows, turned by its orientation: what every transform
    /// sees and what a sidecar records (see `decode::upright_size`). Not part of the
    /// probe, which every render runs: only describing an image needs it.
    pub fn upright_size(&self, probe: &Probe, bytes: &[u8]) -> (u32, u32) {
        decode::upright_size(probe.format, bytes, (probe.width, probe.height))
    }

    /// Identifies and checks an image from its header (see `engine::probe::probe`).
    pub fn probe(&self, bytes: &[u8]) -> Result<Probe> {
        probe::probe(bytes, &self.limits)
    }

    /// Runs `spec` on encoded `bytes`: probe, decode upright, transform, encode.
    pub fn render(&self, bytes: &[u8], spec: &TransformSpec) -> Result<Rendered> {
        let probe = probe::probe_header(bytes, &self.limits)?;
        if let OutputFormat::Image(format) = spec.output_format(probe.format) {
            // A still source with `animated=true` is simply rendered as a still.
            if spec.output.animated
                && format.can_animate()
                && decode::is_animation(probe.format, bytes)
            {
                // Every frame has the canvas size the header gives.
                spec.pipeline
                    .plan((probe.width, probe.height), self.limits.max_output_pixels)?;
                probe::require_whole(probe.format, bytes)?;
                let bytes = animation::render(
                    bytes,
                    probe.format,
                    &self.limits,
                    &spec.pipeline,
                    format,
                    &spec.output,
                )?;
                return Ok(Rendered {
                    bytes,
                    content_type: content_type_of_key(&spec.key(probe.format)),
                });
            }
        }
        let max_output = self.limits.max_output_pixels;
        let image = decode::decode(bytes, &probe, &self.limits, |upright| {
            spec.pipeline.plan(upright, max_output)
        })?;
        let bytes = match (
            spec.pipeline.apply(image)?,
            spec.output_format(probe.format),
        ) {
            (Output::Text(text), _) => text.into_bytes(),
            (Output::Image(image), OutputFormat::Image(format)) => {
                encode::encode(&image, format, &spec.output)?
            }
            (Output::Image(_), OutputFormat::Text(_)) => {
                return Err(Error::internal("a text transform produced an image"))
            }
        };
        Ok(Rendered {
            bytes,
            content_type: content_type_of_key(&spec.key(probe.format)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str, pairs: &[(&str, &str)]) -> Result<TransformSpec> {
        let query = crate::engine::params::owned(pairs);
        TransformSpec::parse(path, &query, &Presets::default(), None)
    }

    #[test]
    fn memory_estimates_count_shrink_on_load_and_progressive_coefficients() {
        let engine = Engine::new(Limits::default(), Presets::default());
        let camera = (3648, 2736);
        let thumbnail = spec("thumbnail", &[("w", "300")]).unwrap();
        let baseline = engine.estimated_memory(Format::Jpeg, camera, Some(false), &thumbnail);
        // Decoded at 1/8 (456x342) either way up, then a thumbnail of 300x225 or, if
        // the EXIF turns it, 300x400: 8 bytes a pixel each, the larger counted.
        assert_eq!(baseline, (456 * 342 + 300 * 400) * 8);

        let full = u64::from(camera.0) * u64::from(camera.1);
        let progressive = engine.estimated_memory(Format::Jpeg, camera, Some(true), &thumbnail);
        assert_eq!(progressive, baseline + full * 6);
        let unknown = engine.estimated_memory(Format::Jpeg, camera, None, &thumbnail);
        assert_eq!(unknown, progressive, "unknown counts as progressive");

        // PNG has no shrink-on-load: the whole image is decoded.
        let png = engine.estimated_memory(Format::Png, camera, None, &thumbnail);
        assert!(png >= full * 8, "{png}");
        // A resize barely smaller than the image cannot shrink on load either.
        let big = spec("resize", &[("w", "3000")]).unwrap();
        let large = engine.estimated_memory(Format::Jpeg, (4000, 3000), Some(false), &big);
        assert!(large >= 4000 * 3000 * 8, "{large}");

        // An AV1 encoder keeps its own copies of the output frame.
        let avif = spec("resize", &[("w", "3000"), ("format", "avif")]).unwrap();
        let encoded = engine.estimated_memory(Format::Jpeg, (4000, 3000), Some(false), &avif);
        assert_eq!(encoded, large + 3000 * 2250 * 16);
    }

    #[test]
    fn keys_fill_defaults_and_keep_the_source_format() {
        let default = spec("thumbnail", &[]).unwrap();
        assert_eq!(
            default.key(Format::Jpeg),
            "e4.thumbnail(w=128,h=128).q80.jpeg"
        );
        assert_eq!(default.key(Format::Png), "e4.thumbnail(w=128,h=128).png");
        assert_eq!(default.key(Format::Bmp), "e4.thumbnail(w=128,h=128).png");
        let explicit = spec("thumbnail", &[("format", "jpeg"), ("q", "80")]).unwrap();
        assert_eq!(explicit.key(Format::Jpeg), default.key(Format::Jpeg));
        let pipeline = spec("thumbnail(size=10)/convert", &[("format", "webp")]).unwrap();
        assert_eq!(
            pipeline.key(Format::Png),
            "e4.thumbnail(w=10,h=10)+convert.q80.webp"
        );
    }

    #[test]
    fn long_keys_are_hashed_to_fit_file_names() {
        let long = |last: &str| {
            let steps: Vec<String> = (0..9).map(|n| format!("resize(w={})", 90 - n)).collect();
            spec(&format!("{}/resize(w={last})", steps.join("/")), &[]).unwrap()
        };
        let key = long("10").key(Format::Png);
        assert!(
            key.starts_with("e4.sha1-") && key.ends_with(".png"),
            "{key}"
        );
        assert_eq!(key.len(), "e4.sha1-".len() + 40 + ".png".len());
        assert_ne!(key, long("11").key(Format::Png));
        assert_eq!(key, long("10").key(Format::Png), "stable");
    }

    #[test]
    fn output_options_are_validated() {
        for bad in [("format", "exe"), ("q", "0"), ("q", "101"), ("bg", "red")] {
            let err = spec("thumbnail", &[bad]).unwrap_err();
            assert_eq!(err.code, "invalid_parameter", "{bad:?}");
        }
        assert!(spec("ascii", &[("format", "png")]).is_err());
        assert_eq!(spec("nope", &[]).unwrap_err().code, "unknown_transform");
    }

    #[test]
    fn content_types_come_from_the_key_extension() {
        assert_eq!(
            content_type_of_key("e4.thumbnail(w=1).q80.jpeg"),
            "image/jpeg"
        );
        assert_eq!(
            content_type_of_key("e4.thumbnail(w=1).q80.avif"),
            "image/avif"
        );
        assert_eq!(
            content_type_of_key("e4.ascii(width=100,invert=false).txt"),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            content_type_of_key("e4.ascii(color=html).html"),
            "text/html; charset=utf-8"
        );
    }
}
