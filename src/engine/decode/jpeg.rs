//! JPEG through mozjpeg: shrink-on-load in the IDCT, EXIF orientation, ICC, CMYK.

use image::metadata::Orientation;
use image::DynamicImage;
use mozjpeg::{ColorSpace, Decompress, Marker};

use super::{baseline, libjpeg, progressive, upright, SHRINK_MARGIN};
use crate::engine::{color, probe, Format};
use crate::error::{Error, Result};

pub fn decode(
    bytes: &[u8],
    plan: impl FnOnce((u32, u32)) -> Result<Option<(u32, u32)>>,
) -> Result<DynamicImage> {
    super::libjpeg::unwinding(|| decode_unguarded(bytes, plan))
}

fn decode_unguarded(
    bytes: &[u8],
    plan: impl FnOnce((u32, u32)) -> Result<Option<(u32, u32)>>,
) -> Result<DynamicImage> {
    let failed =
        |err: std::io::Error| Error::undecodable(format!("this jpeg cannot be decoded: {err}"));
    // APP1 holds EXIF, APP2 the ICC profile, APP14 Adobe's colour transform flag.
    let markers = [Marker::APP(1), Marker::APP(2), Marker::APP(14)];
    let mut decompress = Decompress::builder()
        .with_err(libjpeg::strict_errors())
        .with_markers(&markers)
        .from_mem(bytes)
        .map_err(failed)?;
    let mut orientation = Orientation::NoTransforms;
    let mut icc_chunks = Vec::new();
    let mut adobe = false;
    for marker in decompress.markers() {
        match marker.marker {
            Marker::APP(1) => orientation = exif_orientation(marker.data).unwrap_or(orientation),
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
    let scale = match plan(upright(full, orientation))? {
        Some(needed) => dct_scale(full, upright(needed, orientation)),
        None => 8,
    };
    decompress.scale(scale);
    // At 1/8 scale only DC coefficients matter: a progressive JPEG stops after its DC
    // scans (progressive.rs), a baseline one steps over its AC coefficients (baseline.rs).
    // The baseline path succeeds only on a scan that runs cleanly into EOI, which
    // proves the file whole; every other path has the walk prove it first.
    let progressive = progressive::is_progressive(bytes);
    let dc_only = match scale == 1 && !progressive {
        true => baseline::decode_dc(bytes),
        false => None,
    };
    let dc_only = match dc_only {
        Some(image) => Some(image),
        None => {
            probe::require_whole(Format::Jpeg, bytes)?;
            match scale == 1 && progressive {
                true => progressive::decode_dc(bytes)?,
                false => None,
            }
        }
    };
    // CMYK goes through its profile on the way to RGB; the rest is converted after.
    let cmyk = matches!(
        decompress.color_space(),
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK
    );
    let mut image = match (dc_only, decompress.color_space()) {
        (Some(image), _) => image,
        (None, ColorSpace::JCS_GRAYSCALE) => {
            let mut started = decompress.grayscale().map_err(failed)?;
            let (width, height) = (started.width() as u32, started.height() as u32);
            let samples: Vec<u8> = started.read_scanlines().map_err(failed)?;
            started.finish().map_err(failed)?;
            color::gray(width, height, samples)
                .ok_or_else(|| Error::undecodable("this jpeg has fewer rows than it claims"))?
        }
        (None, ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK) => {
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
        (None, _) => {
            let mut started = decompress.rgb().map_err(failed)?;
            let (width, height) = (started.width() as u32, started.height() as u32);
            let samples: Vec<u8> = started.read_scanlines().map_err(failed)?;
            started.finish().map_err(failed)?;
            let rgb = image::RgbImage::from_raw(width, height, samples)
                .ok_or_else(|| Error::undecodable("this jpeg has fewer rows than it claims"))?;
            DynamicImage::ImageRgb8(rgb)
        }
    };
    if let (Some(icc), false) = (&icc, cmyk) {
        image = color::to_srgb(image, icc);
    }
    image.apply_orientation(orientation);
    Ok(image)
}

/// The orientation an APP1 segment's EXIF block gives, if it is one.
fn exif_orientation(app1: &[u8]) -> Option<Orientation> {
    Orientation::from_exif_chunk(app1.strip_prefix(b"Exif\0\0")?)
}

/// The EXIF orientation the decode applies (none if the header or the block cannot be
/// read: the decode then shows the image as stored, or refuses it).
pub fn orientation(bytes: &[u8]) -> Orientation {
    let read = std::panic::catch_unwind(|| {
        let header = Decompress::builder()
            .with_markers(&[Marker::APP(1)])
            .from_mem(bytes)
            .ok()?;
        header
            .markers()
            .filter(|marker| marker.marker == Marker::APP(1))
            .fold(None, |found, marker| {
                exif_orientation(marker.data).or(found)
            })
    });
    read.ok().flatten().unwrap_or(Orientation::NoTransforms)
}

/// The size the header declares, read by libjpeg straight from `bytes`; libjpeg's
/// message if it cannot read the header.
pub fn header_size(bytes: &[u8]) -> std::result::Result<(u32, u32), String> {
    let read = std::panic::catch_unwind(|| {
        Decompress::new_mem(bytes).map(|header| (header.width() as u32, header.height() as u32))
    });
    match read {
        Ok(read) => read.map_err(|err| err.to_string()),
        Err(payload) => Err(super::libjpeg::panic_message(payload)),
    }
}

/// The smallest DCT scale (n/8, n in 1, 2, 4, 8) that keeps the image at least
/// [`SHRINK_MARGIN`] times `needed` on both sides.
pub(super) fn dct_scale(full: (u32, u32), needed: (u32, u32)) -> u8 {
    [1u8, 2, 4]
        .into_iter()
        .find(|&n| {
            let scaled = |side: u32| side * u32::from(n) / 8;
            scaled(full.0) >= needed.0 * SHRINK_MARGIN && scaled(full.1) >= needed.1 * SHRINK_MARGIN
        })
        .unwrap_or(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dct_scale_keeps_at_least_the_target_size() {
        let margin = |n: u32| n * SHRINK_MARGIN;
        for (full, needed) in [
            ((2560, 1600), (300, 188)),
            ((2560, 1600), (1200, 750)),
            ((100, 100), (10, 10)),
        ] {
            let n = u32::from(dct_scale(full, needed));
            assert!(full.0 * n / 8 >= margin(needed.0) && full.1 * n / 8 >= margin(needed.1));
            if n > 1 {
                let smaller = n / 2;
                assert!(
                    full.0 * smaller / 8 < margin(needed.0)
                        || full.1 * smaller / 8 < margin(needed.1),
                    "{n} is the smallest"
                );
            }
        }
        assert_eq!(
            dct_scale((2560, 1600), (3000, 2000)),
            8,
            "never above full size"
        );
    }
}
