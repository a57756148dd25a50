//! Decoding: encoded bytes to upright sRGB pixels, within limits, no larger than needed.
//!
//! Runs only after [`probe`](super::probe) has accepted the header. Before any pixel
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
use mozjpeg::{ColorSpace, Decompress, Marker};

use crate::config::Limits;
use crate::engine::{color, Format, Probe};
use crate::error::{Error, Result};

/// Bytes per pixel of the widest layout a decoder may produce (RGBA, 16 bits each).
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// How much larger than the pipeline's first resample the decoded image stays, so the
/// final Lanczos pass still has pixels to average (no aliasing from the DCT shrink).
const SHRINK_MARGIN: u32 = 2;

/// Decodes a probed image and turns it upright. `plan` receives the upright size and
/// returns the smallest size the pipeline needs (`None`: full size), or an error.
pub fn decode(
    bytes: &[u8],
    probe: &Probe,
    limits: &Limits,
    plan: impl FnOnce((u32, u32)) -> Result<Option<(u32, u32)>>,
) -> Result<DynamicImage> {
    if probe.format == Format::Jpeg {
        return decode_jpeg(bytes, plan);
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
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
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

/// The size after `orientation` is applied.
fn upright((width, height): (u32, u32), orientation: Orientation) -> (u32, u32) {
    match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (height, width),
        _ => (width, height),
    }
}

fn decode_jpeg(
    bytes: &[u8],
    plan: impl FnOnce((u32, u32)) -> Result<Option<(u32, u32)>>,
) -> Result<DynamicImage> {
    let failed =
        |err: std::io::Error| Error::undecodable(format!("this jpeg cannot be decoded: {err}"));
    // APP1 holds EXIF, APP2 the ICC profile, APP14 Adobe's colour transform flag.
    let markers = [Marker::APP(1), Marker::APP(2), Marker::APP(14)];
    let mut decompress = Decompress::with_markers(&markers)
        .from_mem(bytes)
        .map_err(failed)?;
    let mut orientation = Orientation::NoTransforms;
    let mut icc_chunks = Vec::new();
    let mut adobe = false;
    for marker in decompress.markers() {
        match marker.marker {
            Marker::APP(1) => {
                if let Some(exif) = marker.data.strip_prefix(b"Exif\0\0") {
                    orientation = Orientation::from_exif_chunk(exif).unwrap_or(orientation);
                }
            }
            Marker::APP(2) => {
                if let Some(chunk) = marker.data.strip_prefix(b"ICC_PROFILE\0") {
                    if chunk.len() > 2 {
                        icc_chunks.push((chunk[0], chunk[2..].to_vec()));
                    }
                }
            }
            Marker::APP(14) => adobe |= marker.data.starts_with(b"Adobe"),
            _ => {}
        }
    }
    icc_chunks.sort_by_key(|(sequence, _)| *sequence);
    let icc: Vec<u8> = icc_chunks.into_iter().flat_map(|(_, data)| data).collect();
    let icc = (!icc.is_empty()).then_some(icc);

    let full = (decompress.width() as u32, decompress.height() as u32);
    if let Some(needed) = plan(upright(full, orientation))? {
        let needed = upright(needed, orientation);
        decompress.scale(dct_scale(full, needed));
    }
    let mut image = match decompress.color_space() {
        ColorSpace::JCS_GRAYSCALE => {
            let mut started = decompress.grayscale().map_err(failed)?;
            let (width, height) = (started.width() as u32, started.height() as u32);
            let samples: Vec<u8> = started.read_scanlines().map_err(failed)?;
            started.finish().map_err(failed)?;
            color::gray(width, height, samples)
                .ok_or_else(|| Error::undecodable("this jpeg has fewer rows than it claims"))?
        }
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
            let mut started = decompress
                .to_colorspace(ColorSpace::JCS_CMYK)
                .map_err(failed)?;
            let (width, height) = (started.width() as u32, started.height() as u32);
            let samples: Vec<u8> = started.read_scanlines().map_err(failed)?;
            started.finish().map_err(failed)?;
            DynamicImage::ImageRgb8(color::cmyk_to_rgb(
                width,
                height,
                &samples,
                icc.as_deref(),
                adobe,
            ))
        }
        _ => {
            let mut started = decompress.rgb().map_err(failed)?;
            let (width, height) = (started.width() as u32, started.height() as u32);
            let samples: Vec<u8> = started.read_scanlines().map_err(failed)?;
            started.finish().map_err(failed)?;
            let rgb = image::RgbImage::from_raw(width, height, samples)
                .ok_or_else(|| Error::undecodable("this jpeg has fewer rows than it claims"))?;
            match &icc {
                Some(icc) => color::to_srgb(DynamicImage::ImageRgb8(rgb), icc),
                None => DynamicImage::ImageRgb8(rgb),
            }
        }
    };
    image.apply_orientation(orientation);
    Ok(image)
}

/// The smallest DCT scale (n/8, n in 1, 2, 4, 8) that keeps the image at least
/// [`SHRINK_MARGIN`] times `needed` on both sides.
fn dct_scale(full: (u32, u32), needed: (u32, u32)) -> u8 {
    [1u8, 2, 4]
        .into_iter()
        .find(|&n| {
            let scaled = |side: u32| side * u32::from(n) / 8;
            scaled(full.0) >= needed.0 * SHRINK_MARGIN && scaled(full.1) >= needed.1 * SHRINK_MARGIN
        })
        .unwrap_or(8)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dct_scale_keeps_a_margin_over_the_target() {
        assert_eq!(dct_scale((2560, 1600), (300, 188)), 2); // 640x400 >= 600x376
        assert_eq!(dct_scale((2560, 1600), (128, 80)), 1); // 320x200 >= 256x160
        assert_eq!(dct_scale((2560, 1600), (1200, 750)), 8);
        assert_eq!(dct_scale((100, 100), (10, 10)), 2); // 25x25 >= 20x20
    }
}
