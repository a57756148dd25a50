//! Output options, which every image transform takes: `format`, `q`, `lossless`, `bg`,
//! `animated`. They decide the encoder and are part of the cache key.

use crate::engine::params::{key_color, Args, ParamKind, ParamSpec};
use crate::engine::Format;
use crate::error::{Error, Result};

/// The output options as clients see them in `GET /transforms/`.
pub static OUTPUT_PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "format",
        kind: ParamKind::Choice {
            values: &["jpeg", "png", "webp", "gif", "avif", "bmp", "tiff", "auto"],
        },
        default: None,
        doc: "Output format. Default: the source's (JPEG, PNG, GIF, WebP), else PNG. \
              auto: AVIF, then WebP, then the default, by the request's Accept header.",
    },
    ParamSpec {
        name: "q",
        kind: ParamKind::Int { min: 1, max: 100 },
        default: Some("80"),
        doc: "Quality of lossy output (JPEG, lossy WebP, AVIF).",
    },
    ParamSpec {
        name: "lossless",
        kind: ParamKind::Bool,
        default: Some("false"),
        doc: "WebP only: lossless instead of lossy.",
    },
    ParamSpec {
        name: "bg",
        kind: ParamKind::Color,
        default: Some(DEFAULT_BACKGROUND),
        doc: "Background that transparency is flattened onto in formats without alpha (JPEG, BMP).",
    },
    ParamSpec {
        name: "animated",
        kind: ParamKind::Bool,
        default: Some("false"),
        doc: "GIF and WebP output of an animated source keeps every frame (within max_frames).",
    },
];

const DEFAULT_BACKGROUND: &str = "ffffff";

/// Which format the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatRequest {
    /// Nothing: keep the source's format where the engine writes it, else PNG.
    Source,
    Fixed(Format),
    /// `format=auto`, with what the request's `Accept` allows.
    Auto {
        avif: bool,
        webp: bool,
    },
}

/// Validated output options.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputOptions {
    pub format: FormatRequest,
    pub quality: u8,
    pub lossless: bool,
    pub background: [u8; 3],
    pub animated: bool,
}

impl OutputOptions {
    /// Whether a query parameter is an output option rather than a transform's.
    pub fn owns(name: &str) -> bool {
        OUTPUT_PARAMS.iter().any(|p| p.name == name)
    }

    /// Validates the output options of a request; `accept` is its `Accept` header,
    /// consulted only for `format=auto`.
    pub fn parse(raw: &[(String, String)], accept: Option<&str>) -> Result<Self> {
        // `format` also takes the aliases jpg and tif, so it is read by hand.
        let mut format = FormatRequest::Source;
        let mut rest = Vec::new();
        for (name, value) in raw {
            if name != "format" {
                rest.push((name.clone(), value.clone()));
            } else if value == "auto" {
                format = FormatRequest::Auto {
                    avif: accepts(accept, "image/avif"),
                    webp: accepts(accept, "image/webp"),
                };
            } else {
                let fixed = Format::from_name(value).ok_or_else(|| {
                    Error::bad_request(
                        "invalid_parameter",
                        format!(
                            "parameter 'format' must be one of jpeg, png, webp, gif, avif, bmp, tiff, auto, not '{value}'"
                        ),
                    )
                })?;
                format = FormatRequest::Fixed(fixed);
            }
        }
        let args = Args::parse("output", &OUTPUT_PARAMS[1..], &rest)?;
        Ok(Self {
            format,
            quality: args.int("q").unwrap_or(80) as u8,
            lossless: args.bool("lossless").unwrap_or(false),
            background: args.color("bg").unwrap_or([255, 255, 255]),
            animated: args.bool("animated").unwrap_or(false),
        })
    }

    /// Whether the response depends on the request's `Accept` header.
    pub fn varies_with_accept(&self) -> bool {
        matches!(self.format, FormatRequest::Auto { .. })
    }

    /// The concrete format for a source of format `source`.
    pub fn resolve(&self, source: Format) -> Format {
        let default = if source.keeps_itself() {
            source
        } else {
            Format::Png
        };
        match self.format {
            FormatRequest::Source => default,
            FormatRequest::Fixed(format) => format,
            FormatRequest::Auto { avif: true, .. } => Format::Avif,
            FormatRequest::Auto { webp: true, .. } => Format::WebP,
            FormatRequest::Auto { .. } => default,
        }
    }

    /// The options that change the bytes of `format`, for the cache key, e.g.
    /// `q80`, `lossless`, `q80.bg000000`, `animated`. Options at their default are left
    /// out, so spelling a default changes nothing.
    pub fn key_suffix(&self, format: Format) -> String {
        let mut parts = Vec::new();
        let lossy = format.is_lossy() && !(format == Format::WebP && self.lossless);
        if format == Format::WebP && self.lossless {
            parts.push("lossless".to_string());
        }
        if lossy {
            parts.push(format!("q{}", self.quality));
        }
        if !format.has_alpha() && self.background != [255, 255, 255] {
            parts.push(format!("bg{}", key_color(self.background)));
        }
        if self.animated && format.can_animate() {
            parts.push("animated".to_string());
        }
        parts.join(".")
    }
}

/// Whether an `Accept` header lists `media_type` with a non-zero quality. A wildcard
/// does not count: browsers send `*/*` without being able to show AVIF.
fn accepts(accept: Option<&str>, media_type: &str) -> bool {
    accept.is_some_and(|header| {
        header.split(',').any(|entry| {
            let mut parts = entry.split(';');
            let kind = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            kind.eq_ignore_ascii_case(media_type) && !refused
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)], accept: Option<&str>) -> OutputOptions {
        let raw = crate::engine::params::owned(pairs);
        OutputOptions::parse(&raw, accept).unwrap()
    }

    #[test]
    fn auto_prefers_avif_then_webp_then_the_source() {
        let chrome = Some("image/avif,image/webp,image/apng,image/*,*/*;q=0.8");
        assert_eq!(
            options(&[("format", "auto")], chrome).resolve(Format::Jpeg),
            Format::Avif
        );
        let webp_only = Some("image/webp,*/*");
        assert_eq!(
            options(&[("format", "auto")], webp_only).resolve(Format::Jpeg),
            Format::WebP
        );
        let refused = Some("image/avif;q=0, image/webp");
        assert_eq!(
            options(&[("format", "auto")], refused).resolve(Format::Png),
            Format::WebP
        );
        assert_eq!(
            options(&[("format", "auto")], Some("*/*")).resolve(Format::Png),
            Format::Png
        );
        assert!(options(&[("format", "auto")], None).varies_with_accept());
    }

    #[test]
    fn key_suffix_names_only_what_changes_the_bytes() {
        let default = options(&[], None);
        assert_eq!(default.key_suffix(Format::Jpeg), "q80");
        assert_eq!(default.key_suffix(Format::Png), "");
        assert_eq!(default.key_suffix(Format::WebP), "q80");
        assert_eq!(
            options(&[("lossless", "true"), ("q", "50")], None).key_suffix(Format::WebP),
            "lossless"
        );
        assert_eq!(options(&[("bg", "ffffff")], None), default);
        assert_eq!(
            options(&[("bg", "000000")], None).key_suffix(Format::Jpeg),
            "q80.bg000000"
        );
        assert_eq!(
            options(&[("animated", "true")], None).key_suffix(Format::Gif),
            "animated"
        );
        assert_eq!(
            options(&[("animated", "true")], None).key_suffix(Format::Png),
            ""
        );
    }
}
