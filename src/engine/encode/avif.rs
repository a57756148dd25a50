//! AVIF encoding: libavif (with libaom) when the build found it, else rav1e.
//!
//! libaom at libavif's fastest speed encodes a 12 MP photo in 0.4 s on one core;
//! rav1e at its fastest took 4.4 s. Both get the same AV1 quantizer for a given `q`
//! (ravif's quality curve), so `q` means the same whichever encoder a build has.
//! Output is 8-bit, full-range BT.601 YUV with sRGB signalled, alpha kept.

use image::DynamicImage;

#[cfg(libavif)]
use libavif as encoder;
#[cfg(not(libavif))]
use rav1e as encoder;

/// The encoder this build uses, for the startup log.
pub fn encoder_name() -> String {
    encoder::name()
}

/// Encodes `image` (any layout; converted to 8-bit RGB or RGBA) at `quality` (1-100).
pub fn encode(image: &DynamicImage, quality: u8) -> Result<Vec<u8>, String> {
    let pixels = if image.color().has_alpha() {
        DynamicImage::ImageRgba8(image.to_rgba8())
    } else {
        DynamicImage::ImageRgb8(image.to_rgb8())
    };
    encoder::encode(&pixels, quality)
}

#[cfg(libavif)]
mod libavif {
    use std::ffi::{c_char, c_int, CStr};

    use image::DynamicImage;

    /// libavif's fastest speed (10; libaom stops at its own fastest, cpu-used 9).
    const SPEED: c_int = 10;

    extern "C" {
        fn progimage_avif_codec() -> *const c_char;
        #[allow(clippy::too_many_arguments)]
        fn progimage_avif_encode(
            pixels: *const u8,
            width: u32,
            height: u32,
            channels: c_int,
            quantizer: c_int,
            speed: c_int,
            out: *mut *mut u8,
            out_len: *mut usize,
            message: *mut c_char,
        ) -> c_int;
        fn progimage_avif_free(data: *mut u8, len: usize);
    }

    pub fn name() -> String {
        // SAFETY: the shim returns a static NUL-terminated string.
        let codec = unsafe { CStr::from_ptr(progimage_avif_codec()) };
        format!("libavif ({})", codec.to_string_lossy())
    }

    /// The AV1 quantizer (0 best .. 63 worst) for a quality of 1-100: ravif's curve,
    /// scaled from AV1's 0-255 index to libavif's 0-63.
    pub(super) fn quantizer(quality: u8) -> c_int {
        let q = f32::from(quality.clamp(1, 100)) / 100.0;
        let index = if q >= 0.82 {
            (1.0 - q) * 2.6
        } else if q > 0.25 {
            1.0 - 0.125 - q * 0.5
        } else {
            1.0 - q
        };
        (index * 63.0).round() as c_int
    }

    /// `pixels` is 8-bit RGB or RGBA.
    pub fn encode(pixels: &DynamicImage, quality: u8) -> Result<Vec<u8>, String> {
        let channels = if pixels.color().has_alpha() { 4 } else { 3 };
        let mut out = std::ptr::null_mut();
        let mut len = 0;
        let mut message: [c_char; 256] = [0; 256];
        // SAFETY: `pixels` holds width x height x channels bytes, rows packed, and
        // outlives the call; `out`, `len` and `message` are valid for writes.
        let status = unsafe {
            progimage_avif_encode(
                pixels.as_bytes().as_ptr(),
                pixels.width(),
                pixels.height(),
                channels,
                quantizer(quality),
                SPEED,
                &mut out,
                &mut len,
                message.as_mut_ptr(),
            )
        };
        if status != 0 {
            // SAFETY: on failure the shim leaves a NUL-terminated message there.
            let message = unsafe { CStr::from_ptr(message.as_ptr()) };
            return Err(message.to_string_lossy().into_owned());
        }
        // SAFETY: on success `out` points at `len` bytes that are ours until freed,
        // and they are freed once, after the copy.
        let bytes = unsafe { std::slice::from_raw_parts(out, len) }.to_vec();
        unsafe { progimage_avif_free(out, len) };
        Ok(bytes)
    }
}

#[cfg(not(libavif))]
mod rav1e {
    use image::codecs::avif::AvifEncoder;
    use image::{DynamicImage, ImageEncoder};

    /// rav1e's fastest speed: on the 10 MP camera photo, one core, speed 8 took 16 s
    /// and speed 10 4.4 s for a file 4% larger.
    const SPEED: u8 = 10;

    pub fn name() -> String {
        "rav1e".to_string()
    }

    /// `pixels` is 8-bit RGB or RGBA.
    pub fn encode(pixels: &DynamicImage, quality: u8) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        AvifEncoder::new_with_speed_quality(&mut out, SPEED, quality)
            .write_image(
                pixels.as_bytes(),
                pixels.width(),
                pixels.height(),
                pixels.color().into(),
            )
            .map_err(|e| e.to_string())?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    use super::*;

    /// The bytes after the first `tag` (a box type) in `avif`.
    fn after<'a>(avif: &'a [u8], tag: &[u8]) -> &'a [u8] {
        let at = avif.windows(tag.len()).position(|w| w == tag);
        &avif[at.unwrap_or_else(|| panic!("no {tag:?} box")) + tag.len()..]
    }

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x * 6) as u8, (y * 8) as u8, 128])
        })
    }

    #[test]
    fn output_declares_its_size_and_no_alpha() {
        let avif = encode(&DynamicImage::ImageRgb8(gradient(40, 30)), 80).unwrap();
        assert_eq!(&avif[4..12], b"ftypavif");
        let ispe = after(&avif, b"ispe");
        assert_eq!(&ispe[4..12], [0, 0, 0, 40, 0, 0, 0, 30]);
        assert!(!avif.windows(5).any(|w| w == b"alpha"));
    }

    /// rav1e builds go through the image crate, which encodes RGB without a colr box.
    #[cfg(libavif)]
    #[test]
    fn libavif_output_signals_srgb_and_full_range() {
        let avif = encode(&DynamicImage::ImageRgb8(gradient(40, 30)), 80).unwrap();
        let nclx = after(&avif, b"colrnclx");
        // Primaries BT.709, transfer sRGB, matrix BT.601, full range.
        assert_eq!(&nclx[..6], [0, 1, 0, 13, 0, 6]);
        assert_eq!(nclx[6] & 0x80, 0x80);
    }

    #[test]
    fn alpha_is_kept_as_an_auxiliary_image() {
        let rgba = RgbaImage::from_fn(24, 24, |x, _| Rgba([200, 10, 10, (x * 10) as u8]));
        let avif = encode(&DynamicImage::ImageRgba8(rgba), 80).unwrap();
        after(&avif, b"urn:mpeg:mpegB:cicp:systems:auxiliary:alpha");
    }

    #[test]
    fn quality_trades_size() {
        let image = DynamicImage::ImageRgb8(gradient(64, 64));
        let small = encode(&image, 20).unwrap();
        let large = encode(&image, 95).unwrap();
        assert!(
            small.len() < large.len(),
            "{} vs {}",
            small.len(),
            large.len()
        );
    }

    #[cfg(libavif)]
    #[test]
    fn quality_maps_onto_ravifs_curve() {
        use super::libavif::quantizer;
        // ravif: q80 -> index 121 of 255, q100 -> 0, q1 -> 252.
        assert_eq!(quantizer(80), 30);
        assert_eq!(quantizer(100), 0);
        assert_eq!(quantizer(1), 62);
        assert!((1..100).all(|q| quantizer(q) >= quantizer(q + 1)));
    }
}
