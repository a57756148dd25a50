//! Still WebP through libwebp, which can scale while decoding (shrink-on-load) and is
//! several times faster than the pure-Rust decoder on lossy files. Orientation and
//! ICC profile come from the container, read by the image crate without decoding.
//! Animated WebP goes through the image crate (first frame, or every frame).

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, RgbImage, RgbaImage};
use libwebp_sys as ffi;

use super::{upright, SHRINK_MARGIN};
use crate::engine::color;
use crate::error::{Error, Result};

/// Whether the container says the file is an animation (VP8X flag).
pub fn is_animated(bytes: &[u8]) -> bool {
    bytes.len() > 20 && &bytes[12..16] == b"VP8X" && bytes[20] & 0x02 != 0
}

pub fn decode(
    bytes: &[u8],
    plan: impl FnOnce((u32, u32)) -> Result<Option<(u32, u32)>>,
) -> Result<DynamicImage> {
    let failed = |why: &str| Error::undecodable(format!("this webp cannot be decoded: {why}"));
    let mut container = image::codecs::webp::WebPDecoder::new(Cursor::new(bytes))
        .map_err(|e| failed(&e.to_string()))?;
    let orientation = super::orientation_of(container.exif_metadata().ok().flatten());
    let icc = container.icc_profile().ok().flatten();

    // SAFETY: the config is initialised by libwebp before use; `bytes` outlives every
    // call that reads it; the output buffer is ours (external memory) and sized for
    // exactly the width, height and stride we tell libwebp.
    unsafe {
        let mut config: ffi::WebPDecoderConfig = std::mem::zeroed();
        if !ffi::WebPInitDecoderConfig(&mut config) {
            return Err(Error::internal("libwebp version mismatch"));
        }
        if ffi::WebPGetFeatures(bytes.as_ptr(), bytes.len(), &mut config.input)
            != ffi::VP8StatusCode::VP8_STATUS_OK
        {
            return Err(failed("unreadable bitstream header"));
        }
        let full = (config.input.width as u32, config.input.height as u32);
        let mut size = full;
        if let Some(needed) = plan(upright(full, orientation))? {
            let needed = upright(needed, orientation);
            let scale = (f64::from(needed.0 * SHRINK_MARGIN) / f64::from(full.0))
                .max(f64::from(needed.1 * SHRINK_MARGIN) / f64::from(full.1));
            if scale < 1.0 {
                size = (
                    ((f64::from(full.0) * scale).ceil() as u32).max(1),
                    ((f64::from(full.1) * scale).ceil() as u32).max(1),
                );
                config.options.use_scaling = 1;
                config.options.scaled_width = size.0 as i32;
                config.options.scaled_height = size.1 as i32;
            }
        }
        let alpha = config.input.has_alpha != 0;
        let channels = if alpha { 4 } else { 3 };
        let stride = size.0 as usize * channels;
        let mut pixels = vec![0u8; stride * size.1 as usize];
        config.output.colorspace = if alpha {
            ffi::WEBP_CSP_MODE::MODE_RGBA
        } else {
            ffi::WEBP_CSP_MODE::MODE_RGB
        };
        config.output.is_external_memory = 1;
        config.output.u.RGBA = ffi::WebPRGBABuffer {
            rgba: pixels.as_mut_ptr(),
            stride: stride as i32,
            size: pixels.len(),
        };
        let status = ffi::WebPDecode(bytes.as_ptr(), bytes.len(), &mut config);
        ffi::WebPFreeDecBuffer(&mut config.output);
        if status != ffi::VP8StatusCode::VP8_STATUS_OK {
            return Err(failed(&format!("{status:?}")));
        }
        let mut image = if alpha {
            DynamicImage::ImageRgba8(
                RgbaImage::from_raw(size.0, size.1, pixels)
                    .ok_or_else(|| failed("short buffer"))?,
            )
        } else {
            DynamicImage::ImageRgb8(
                RgbImage::from_raw(size.0, size.1, pixels).ok_or_else(|| failed("short buffer"))?,
            )
        };
        if let Some(icc) = icc {
            image = color::to_srgb(image, &icc);
        }
        image.apply_orientation(orientation);
        Ok(image)
    }
}
