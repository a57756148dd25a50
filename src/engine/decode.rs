//! Decoding: encoded bytes to upright pixels, within limits.
//!
//! Runs only after [`probe`](super::probe) has accepted the header, and gives the
//! decoder an allocation limit too, so a lying header cannot make it allocate more
//! than the pixel limit allows. EXIF orientation is applied here, before any
//! transform does size maths, so a photo shot in portrait is portrait everywhere.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError};

use crate::config::Limits;
use crate::engine::Probe;
use crate::error::{Error, Result};

/// Bytes per pixel of the widest layout a decoder may produce (RGBA, 16 bits each).
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// Decodes a probed image and turns it upright.
pub fn decode(bytes: &[u8], probe: &Probe, limits: &Limits) -> Result<DynamicImage> {
    let mut reader =
        image::ImageReader::with_format(Cursor::new(bytes), probe.format.to_image_format());
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_input_pixels.saturating_mul(MAX_BYTES_PER_PIXEL));
    reader.limits(decoder_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|err| decode_error(probe, err))?;
    // A broken EXIF block is no reason to refuse an image: it is shown as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|err| decode_error(probe, err))?;
    image.apply_orientation(orientation);
    Ok(image)
}

fn decode_error(probe: &Probe, err: ImageError) -> Error {
    let format = probe.format;
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
