//! Decoding: encoded bytes to upright sRGB pixels, within limits, no larger than needed.
//!
//! Runs only after `engine::probe` has accepted the header, and decodes only whole
//! files: each is walked first (`probe::require_whole`), except where the JPEG
//! decoder proves it by reading the scan to its end. Before any pixel
//! is decoded, the caller's `plan` sees the upright size: it checks the output limits
//! and says how small the decoder may go. JPEGs are decoded by mozjpeg
//! (libjpeg-turbo's SIMD code), which can scale by 1/2, 1/4 or 1/8 inside the inverse
//! DCT ("shrink-on-load"): a 12 MP photo bound for a 300 px thumbnail is never
//! decoded at full size, which saves most of the time and memory. Other formats go
//! through the image crate with an allocation limit.
//!
//! EXIF orientation is applied here, before any transform does size maths, so a photo
//! shot in portrait is portrait everywhere. Embedded ICC profiles are converted to sRGB.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError};

#[cfg(libavif)]
mod avif;
mod baseline;
mod jpeg;
mod libjpeg;
mod progressive;
mod webp;

use crate::config::Limits;
use crate::engine::{color, probe, Format, Probe};
use crate::error::{Error, Result};

/// Bytes per pixel of the widest layout a decoder may produce (RGBA, 16 bits each).
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// How much larger than the pipeline's first resample a shrink-on-load decode stays.
/// 1 (decode to at least the target, as Pillow's draft does) measured as fast as
/// Pillow and at least its PSNR against a full Lanczos reference; 2 cost 20-30% more
/// time for +1 dB (see DECISIONS.md).
const SHRINK_MARGIN: u32 = 1;

/// How many pixels decoding a `format` image of `full` (stored) size yields when the
/// pipeline needs `needed` (stored orientation): JPEG shrinks by 1/2, 1/4 or 1/8 in
/// the IDCT, WebP to any size; the rest decode at full size.
pub fn decoded_pixels(format: Format, full: (u32, u32), needed: Option<(u32, u32)>) -> u64 {
    let size = match (format, needed) {
        (Format::Jpeg, Some(needed)) => {
            let eighths = u32::from(jpeg::dct_scale(full, needed));
            let scaled = |side: u32| (side * eighths).div_ceil(8);
            (scaled(full.0), scaled(full.1))
        }
        (Format::WebP, Some(needed)) => (needed.0.min(full.0), needed.1.min(full.1)),
        _ => full,
    };
    u64::from(size.0) * u64::from(size.1)
}

/// Whether a JPEG is progressive: libjpeg then buffers every coefficient of the
/// image before it can scale, whatever the shrink-on-load.
pub fn is_progressive_jpeg(bytes: &[u8]) -> bool {
    progressive::is_progressive(bytes)
}

/// Whether the file holds more than a still picture: every GIF may (its frames are
/// only counted by decoding), a WebP or PNG only when its container says so (the
/// VP8X animation flag, APNG's acTL chunk).
pub fn is_animation(format: Format, bytes: &[u8]) -> bool {
    match format {
        Format::Gif => true,
        Format::WebP => webp::is_animated(bytes),
        Format::Png => image::codecs::png::PngDecoder::new(Cursor::new(bytes))
            .and_then(|png| png.is_apng())
            .unwrap_or(false),
        _ => false,
    }
}

/// The size a JPEG's header declares, or libjpeg's complaint about the header.
pub fn jpeg_header_size(bytes: &[u8]) -> std::result::Result<(u32, u32), String> {
    jpeg::header_size(bytes)
}

/// The size an AVIF's container declares. Builds without libavif never ask: the
/// probe refuses AVIF before.
#[cfg(libavif)]
pub fn avif_header_size(bytes: &[u8]) -> std::result::Result<(u32, u32), String> {
    avif::header_size(bytes)
}

/// The size of a still image as shown, and as every transform sees it: the stored
/// size turned by the orientation the decode applies (EXIF in JPEG's APP1, in WebP,
/// PNG and TIFF; AVIF's `irot`). A broken EXIF block counts as none, as it does there.
pub fn upright_size(format: Format, bytes: &[u8], stored: (u32, u32)) -> (u32, u32) {
    let orientation = match format {
        Format::Jpeg => jpeg::orientation(bytes),
        #[cfg(libavif)]
        Format::Avif => return avif::upright_size(bytes).unwrap_or(stored),
        _ => image::ImageReader::with_format(Cursor::new(bytes), format.to_image_format())
            .into_decoder()
            .map_or(Orientation::NoTransforms, |mut decoder| {
                orientation_of(decoder.exif_metadata().ok().flatten())
            }),
    };
    upright(stored, orientation)
}

/// Decodes a probed image and turns it upright. `plan` receives the upright size and
/// returns the smallest size the pipeline needs (`None`: full size), or an error.
pub fn decode(
    bytes: &[u8],
    probe: &Probe,
    limits: &Limits,
    plan: impl FnOnce((u32, u32)) -> Result<Option<(u32, u32)>>,
) -> Result<DynamicImage> {
    match probe.format {
        Format::Jpeg => return jpeg::decode(bytes, plan),
        format => probe::require_whole(format, bytes)?,
    }
    match probe.format {
        Format::WebP if !webp::is_animated(bytes) => return webp::decode(bytes, plan),
        #[cfg(libavif)]
        Format::Avif => return avif::decode(bytes, limits, plan),
        _ => {}
    }
    let mut reader =
        image::ImageReader::with_format(Cursor::new(bytes), probe.format.to_image_format());
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_input_pixels.saturating_mul(MAX_BYTES_PER_PIXEL));
    reader.limits(decoder_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|err| decode_error(probe.format, err))?;
    // A broken EXIF block is no reason to refuse an image: it is shown as stored.
    let orientation = orientation_of(decoder.exif_metadata().ok().flatten());
    let icc = decoder.icc_profile().ok().flatten();
    plan(upright(decoder.dimensions(), orientation))?;
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|err| decode_error(probe.format, err))?;
    if let Some(icc) = icc {
        image = color::to_srgb(image, &icc);
    }
    image.apply_orientation(orientation);
    Ok(image)
}

/// The orientation an EXIF block gives, with or without the `Exif\0\0` prefix that
/// JPEG's APP1 requires and many WebP writers (exiftool, cameras) copy into the WebP
/// `EXIF` chunk too; the image crate expects the bare TIFF structure.
fn orientation_of(exif: Option<Vec<u8>>) -> Orientation {
    exif.and_then(|exif| {
        Orientation::from_exif_chunk(exif.strip_prefix(b"Exif\0\0").unwrap_or(&exif))
    })
    .unwrap_or(Orientation::NoTransforms)
}

/// The size after `orientation` is applied (also its own inverse).
fn upright((width, height): (u32, u32), orientation: Orientation) -> (u32, u32) {
    match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (height, width),
        _ => (width, height),
    }
}

fn decode_error(format: Format, err: ImageError) -> Error {
    match err {
        ImageError::Limits(limit) => Error::too_large(
            "max_input_pixels",
            format!("decoding this {format} would exceed the memory allowed by max_input_pixels: {limit}"),
        ),
        ImageError::Unsupported(what) => {
            Error::unsupported(format!("this {format} uses a feature the engine does not support: {what}"))
        }
        other => Error::undecodable(format!("this {format} cannot be decoded: {other}")),
    }
}
