//! The image engine: bytes in, bytes out. It knows pixels, not HTTP or stores.
//!
//! A request for a transform becomes a [`TransformSpec`] (the transform with its
//! validated parameters plus the output format and quality). Its [`key`] is the
//! canonical name of the result, used as the cache key. [`Engine::render`] runs
//! probe, decode (upright), the operation and the encoder, and is CPU-bound: callers
//! run it on a blocking thread.
//!
//! [`key`]: TransformSpec::key

pub mod decode;
pub mod encode;
mod format;
pub mod ops;
pub mod params;
mod probe;
pub mod resize;

pub use format::Format;
pub use probe::Probe;

use crate::config::Limits;
use crate::error::{Error, Result};
use ops::{Definition, Operation, Output, Produces};

/// Bumped whenever a change to the engine changes its output, so cached results from
/// an older engine are never served as the new one's: the version is in every key.
pub const ENGINE_VERSION: u32 = 1;

/// JPEG (and later lossy) quality when `q` is not given.
pub const DEFAULT_QUALITY: u8 = 80;

/// A transform request, validated: what to run and how to encode the result.
#[derive(Debug)]
pub struct TransformSpec {
    definition: &'static Definition,
    operation: Box<dyn Operation>,
    format: Option<Format>,
    quality: u8,
}

/// The format a result is encoded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Image(Format),
    Text,
}

/// An encoded result and its media type.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub content_type: String,
}

impl TransformSpec {
    /// Parses a transform name and its query parameters. `format` and `q` are output
    /// options every image transform takes; the rest belong to the transform.
    pub fn parse(name: &str, query: &[(String, String)]) -> Result<Self> {
        let definition = ops::find(name)?;
        let mut format = None;
        let mut quality = None;
        let mut params = Vec::new();
        for (key, value) in query {
            match key.as_str() {
                "format" => format = Some(parse_format(value)?),
                "q" => quality = Some(parse_quality(value)?),
                _ => params.push((key.clone(), value.clone())),
            }
        }
        if definition.produces == Produces::Text && (format.is_some() || quality.is_some()) {
            return Err(Error::bad_request(
                "invalid_parameter",
                format!("transform '{name}' produces text: 'format' and 'q' do not apply"),
            ));
        }
        Ok(Self {
            definition,
            operation: definition.build(&params)?,
            format,
            quality: quality.unwrap_or(DEFAULT_QUALITY),
        })
    }

    /// The original image re-encoded as `format` (`GET /images/<id>.png`).
    pub fn convert_to(format: Format) -> Result<Self> {
        Self::parse(
            "convert",
            &[("format".to_string(), format.name().to_string())],
        )
    }

    /// The output format for a source of format `source`: the one asked for, else the
    /// source's own when the engine can write it, else PNG.
    pub fn output_format(&self, source: Format) -> OutputFormat {
        match self.definition.produces {
            Produces::Text => OutputFormat::Text,
            Produces::Image => {
                OutputFormat::Image(self.format.unwrap_or(if source.is_writable() {
                    source
                } else {
                    Format::Png
                }))
            }
        }
    }

    /// The canonical key of this result for a source of format `source`, e.g.
    /// `e1.thumbnail(w=128,h=128).q80.jpeg`: engine version, operation with every
    /// parameter resolved, quality where it matters, and the format as extension.
    pub fn key(&self, source: Format) -> String {
        let operation = self.operation.key();
        match self.output_format(source) {
            OutputFormat::Text => format!("e{ENGINE_VERSION}.{operation}.txt"),
            OutputFormat::Image(format) if format.is_lossy() => {
                format!("e{ENGINE_VERSION}.{operation}.q{}.{format}", self.quality)
            }
            OutputFormat::Image(format) => format!("e{ENGINE_VERSION}.{operation}.{format}"),
        }
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

fn parse_format(value: &str) -> Result<Format> {
    Format::from_name(value)
        .filter(|f| f.is_writable())
        .ok_or_else(|| {
            let writable: Vec<_> = Format::ALL
                .iter()
                .filter(|f| f.is_writable())
                .map(|f| f.name())
                .collect();
            Error::bad_request(
                "invalid_parameter",
                format!(
                    "parameter 'format' must be one of {}, not '{value}'",
                    writable.join(", ")
                ),
            )
        })
}

fn parse_quality(value: &str) -> Result<u8> {
    value
        .parse::<u8>()
        .ok()
        .filter(|q| (1..=100).contains(q))
        .ok_or_else(|| {
            Error::bad_request(
                "invalid_parameter",
                format!("parameter 'q' must be a whole number from 1 to 100, not '{value}'"),
            )
        })
}

/// The engine with its limits. Cheap to clone; every method is synchronous and
/// CPU-bound.
#[derive(Debug, Clone)]
pub struct Engine {
    limits: Limits,
}

impl Engine {
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    /// Identifies and checks an image from its header (see [`probe::probe`]).
    pub fn probe(&self, bytes: &[u8]) -> Result<Probe> {
        probe::probe(bytes, &self.limits)
    }

    /// Runs `spec` on encoded `bytes`: probe, decode upright, transform, encode.
    pub fn render(&self, bytes: &[u8], spec: &TransformSpec) -> Result<Rendered> {
        let probe = self.probe(bytes)?;
        let image = decode::decode(bytes, &probe, &self.limits)?;
        let output_format = spec.output_format(probe.format);
        let bytes = match (spec.operation.apply(image)?, output_format) {
            (Output::Text(text), _) => text.into_bytes(),
            (Output::Image(image), OutputFormat::Image(format)) => {
                encode::encode(&image, format, spec.quality)?
            }
            (Output::Image(_), OutputFormat::Text) => {
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

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keys_fill_defaults_and_keep_the_source_format() {
        let spec = TransformSpec::parse("thumbnail", &[]).unwrap();
        assert_eq!(spec.key(Format::Jpeg), "e1.thumbnail(w=128,h=128).q80.jpeg");
        assert_eq!(spec.key(Format::Png), "e1.thumbnail(w=128,h=128).png");
        assert_eq!(spec.key(Format::Bmp), "e1.thumbnail(w=128,h=128).png");
        let explicit =
            TransformSpec::parse("thumbnail", &query(&[("format", "jpeg"), ("q", "80")])).unwrap();
        assert_eq!(explicit.key(Format::Jpeg), spec.key(Format::Jpeg));
    }

    #[test]
    fn output_options_are_validated() {
        for bad in [
            ("format", "bmp"),
            ("format", "exe"),
            ("q", "0"),
            ("q", "101"),
        ] {
            let err = TransformSpec::parse("thumbnail", &query(&[bad])).unwrap_err();
            assert_eq!(err.code, "invalid_parameter", "{bad:?}");
        }
        assert!(TransformSpec::parse("ascii", &query(&[("format", "png")])).is_err());
        assert_eq!(
            TransformSpec::parse("nope", &[]).unwrap_err().code,
            "unknown_transform"
        );
    }

    #[test]
    fn content_types_come_from_the_key_extension() {
        assert_eq!(
            content_type_of_key("e1.thumbnail(w=1).q80.jpeg"),
            "image/jpeg"
        );
        assert_eq!(
            content_type_of_key("e1.ascii(width=100,invert=false).txt"),
            "text/plain; charset=utf-8"
        );
    }
}
