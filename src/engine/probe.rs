//! Probing: what an image is, from its header alone, before any pixel memory exists.
//!
//! An upload is accepted or refused here: the format from magic bytes (415 if none),
//! the dimensions from the header (422 if unreadable or zero, 413 if over the pixel
//! limit), and a structural walk that proves the file is complete ([`complete`]).
//! The walk matters because decoders pad a truncated file with grey and report
//! success; a store must not keep, or serve, such a file as if it were whole.

use std::io::Cursor;

pub(super) mod complete;

use crate::config::Limits;
use crate::engine::{decode, Format};
use crate::error::{Error, Result};

/// What the header says about an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub format: Format,
    /// The size as stored, which limits and decoders work in.
    pub width: u32,
    pub height: u32,
}

/// Identifies and checks an image without decoding its pixels: what an upload must
/// pass before it is stored.
pub fn probe(bytes: &[u8], limits: &Limits) -> Result<Probe> {
    let probe = probe_header(bytes, limits)?;
    require_whole(probe.format, bytes)?;
    Ok(probe)
}

/// [`probe`] without the walk, for a render, whose decode checks that the file is
/// whole itself (`decode::decode`): the decoder that reads a JPEG's scan to its EOI
/// proves it on the way, and the walk would read the 5 MB scan of a camera photo a
/// second time (2% of a thumbnail's CPU).
pub fn probe_header(bytes: &[u8], limits: &Limits) -> Result<Probe> {
    let format = Format::sniff(bytes).ok_or_else(|| {
        Error::unsupported(
            "not an image the engine reads: expected JPEG, PNG, GIF, WebP, AVIF, BMP or TIFF bytes",
        )
    })?;
    if !format.is_readable() {
        return Err(Error::unsupported(format!(
            "this server reads no {format}: it was built without libavif"
        )));
    }
    // Some decoders refuse absurd sizes with a generic error; check the claim first
    // so that a bomb is reported as what it is.
    if let Some(claimed) = claimed_dimensions(format, bytes) {
        check_pixels(claimed, limits)?;
    }
    let (width, height) = header_size(format, bytes)?;
    if width == 0 || height == 0 {
        return Err(Error::undecodable(format!(
            "this {format} claims a size of {width}x{height}: an image needs at least one pixel"
        )));
    }
    check_pixels((width, height), limits)?;
    Ok(Probe {
        format,
        width,
        height,
    })
}

/// Refuses a file whose data stops before its image ends (see [`complete`]).
pub fn require_whole(format: Format, bytes: &[u8]) -> Result<()> {
    match complete::is_complete(format, bytes) {
        true => Ok(()),
        false => Err(Error::undecodable(format!(
            "this {format} is truncated: its data stops before the image ends"
        ))),
    }
}

fn check_pixels((width, height): (u32, u32), limits: &Limits) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_input_pixels {
        return Err(Error::too_large(
            "max_input_pixels",
            format!(
                "the image claims {width}x{height} ({pixels} pixels), over max_input_pixels ({})",
                limits.max_input_pixels
            ),
        ));
    }
    Ok(())
}

/// The size in the header, as the decoder will read it. JPEGs go through libjpeg's
/// own header reader: the image crate's JPEG decoder copies the whole file into a
/// buffer of its own first (10 MB for a camera photo, on every upload and render).
pub(crate) fn header_size(format: Format, bytes: &[u8]) -> Result<(u32, u32)> {
    let size = match format {
        Format::Jpeg => decode::jpeg_header_size(bytes),
        #[cfg(libavif)]
        Format::Avif => decode::avif_header_size(bytes),
        _ => image::ImageReader::with_format(Cursor::new(bytes), format.to_image_format())
            .into_dimensions()
            .map_err(|err| err.to_string()),
    };
    size.map_err(|err| Error::undecodable(format!("cannot read this {format} header: {err}")))
}

/// The size a header claims, read at fixed offsets, for the formats where that is
/// trivial: PNG's IHDR, GIF's logical screen, BMP's info header.
fn claimed_dimensions(format: Format, bytes: &[u8]) -> Option<(u32, u32)> {
    let u16_le = |at: usize| {
        Some(u32::from(u16::from_le_bytes(
            bytes.get(at..at + 2)?.try_into().ok()?,
        )))
    };
    let u32_be = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let i32_le = |at: usize| {
        Some(i32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?).unsigned_abs())
    };
    match format {
        Format::Png if bytes.get(12..16)? == b"IHDR" => Some((u32_be(16)?, u32_be(20)?)),
        Format::Gif => Some((u16_le(6)?, u16_le(8)?)),
        // A 12-byte BITMAPCOREHEADER has 16-bit sides; every later header 32-bit ones.
        Format::Bmp if u16_le(14)? == 12 => Some((u16_le(18)?, u16_le(20)?)),
        Format::Bmp => Some((i32_le(18)?, i32_le(22)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(format: image::ImageFormat) -> Vec<u8> {
        let img = image::DynamicImage::new_rgb8(64, 48);
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn whole_files_pass_and_truncated_ones_fail() {
        for format in [image::ImageFormat::Jpeg, image::ImageFormat::Png] {
            let bytes = encoded(format);
            let probe = probe(&bytes, &Limits::default()).unwrap();
            assert_eq!((probe.width, probe.height), (64, 48));
            let cut = &bytes[..bytes.len() - 20];
            let err = super::probe(cut, &Limits::default()).unwrap_err();
            assert_eq!(err.code, "undecodable_image", "{format:?}: {err}");
        }
    }

    #[test]
    fn trailing_bytes_after_jpeg_eoi_are_allowed() {
        let mut bytes = encoded(image::ImageFormat::Jpeg);
        bytes.extend_from_slice(b"....ftypmp42 a motion photo's video");
        assert!(probe(&bytes, &Limits::default()).is_ok());
    }

    #[test]
    fn pixel_limit_is_checked_from_the_header() {
        let bytes = encoded(image::ImageFormat::Png);
        let limits = Limits {
            max_input_pixels: 1000,
            ..Limits::default()
        };
        let err = probe(&bytes, &limits).unwrap_err();
        assert_eq!(err.code, "max_input_pixels");
    }
}
