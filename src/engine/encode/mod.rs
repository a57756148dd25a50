//! Encoding: pixels to bytes in the requested format.
//!
//! Each encoder gets the pixel layout it can hold: formats without alpha (JPEG, BMP)
//! get transparency flattened onto the `bg` colour rather than turned black; 16-bit
//! images are reduced to 8 bits for the formats that cannot carry more.
//!
//! JPEG goes through mozjpeg (libjpeg-turbo's SIMD code; about ten times faster than
//! image's encoder), WebP through libwebp (lossy and lossless), AVIF as [`avif`] says.

pub mod avif;

use std::io::Cursor;

use image::codecs::gif::GifEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{DynamicImage, ImageError, Rgb, RgbImage};

use crate::engine::{Format, OutputOptions};
use crate::error::{Error, Result};

/// Encodes `image` as `format` with the output options that apply to it.
pub fn encode(image: &DynamicImage, format: Format, options: &OutputOptions) -> Result<Vec<u8>> {
    let failed = |err: String| Error::internal(format!("encoding {format} failed: {err}"));
    match format {
        Format::Jpeg => jpeg(&flatten(image, options.background), options.quality)
            .map_err(|e| failed(e.to_string())),
        Format::WebP => Ok(webp(image, options)),
        Format::Png => {
            let mut out = Vec::new();
            let encoder =
                PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive);
            image
                .write_with_encoder(encoder)
                .map_err(|e| failed(e.to_string()))?;
            Ok(out)
        }
        Format::Avif => avif::encode(image, options.quality).map_err(failed),
        Format::Gif => {
            let mut out = Vec::new();
            GifEncoder::new_with_speed(&mut out, 10)
                .encode_frame(image::Frame::new(image.to_rgba8()))
                .map_err(|e: ImageError| failed(e.to_string()))?;
            Ok(out)
        }
        Format::Bmp | Format::Tiff => {
            let pixels = match (format, image) {
                (Format::Bmp, _) => flatten(image, options.background),
                // The TIFF encoder has no gray-with-alpha layout: RGBA holds it exactly.
                (_, DynamicImage::ImageLumaA8(_)) => DynamicImage::ImageRgba8(image.to_rgba8()),
                (_, DynamicImage::ImageLumaA16(_)) => DynamicImage::ImageRgba16(image.to_rgba16()),
                _ => image.clone(),
            };
            let mut out = Cursor::new(Vec::new());
            pixels
                .write_to(&mut out, format.to_image_format())
                .map_err(|e| failed(e.to_string()))?;
            Ok(out.into_inner())
        }
    }
}

/// 8-bit RGB (or gray, for a gray image on a gray background) with any transparency
/// composited over `background`.
pub fn flatten(image: &DynamicImage, background: [u8; 3]) -> DynamicImage {
    if !image.color().has_alpha() {
        return match image.color().has_color() {
            true => DynamicImage::ImageRgb8(image.to_rgb8()),
            false => DynamicImage::ImageLuma8(image.to_luma8()),
        };
    }
    let rgba = image.to_rgba8();
    let flat = RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over = |c: u8, bg: u8| {
            ((u16::from(c) * u16::from(a) + u16::from(bg) * u16::from(255 - a) + 127) / 255) as u8
        };
        Rgb([
            over(r, background[0]),
            over(g, background[1]),
            over(b, background[2]),
        ])
    });
    let gray_background = background[0] == background[1] && background[1] == background[2];
    if image.color().has_color() || !gray_background {
        DynamicImage::ImageRgb8(flat)
    } else {
        DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(flat).into_luma8())
    }
}

/// Baseline JPEG with optimised Huffman tables, 4:2:0 for colour.
fn jpeg(image: &DynamicImage, quality: u8) -> std::io::Result<Vec<u8>> {
    let (color_space, pixels) = match image {
        DynamicImage::ImageLuma8(gray) => {
            (mozjpeg::ColorSpace::JCS_GRAYSCALE, gray.as_raw().as_slice())
        }
        other => (mozjpeg::ColorSpace::JCS_RGB, other.as_bytes()),
    };
    let mut compress = mozjpeg::Compress::new(color_space);
    compress.set_size(image.width() as usize, image.height() as usize);
    compress.set_fastest_defaults();
    compress.set_optimize_coding(true);
    compress.set_quality(f32::from(quality));
    let mut started = compress.start_compress(Vec::new())?;
    started.write_scanlines(pixels)?;
    started.finish()
}

/// libwebp, lossy at `q` unless `lossless` is set.
fn webp(image: &DynamicImage, options: &OutputOptions) -> Vec<u8> {
    let pixels = if image.color().has_alpha() {
        DynamicImage::ImageRgba8(image.to_rgba8())
    } else {
        DynamicImage::ImageRgb8(image.to_rgb8())
    };
    let layout = if pixels.color().has_alpha() {
        webp::PixelLayout::Rgba
    } else {
        webp::PixelLayout::Rgb
    };
    let encoder = webp::Encoder::new(pixels.as_bytes(), layout, pixels.width(), pixels.height());
    let memory = if options.lossless {
        encoder.encode_lossless()
    } else {
        encoder.encode(f32::from(options.quality))
    };
    memory.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> OutputOptions {
        let raw = crate::engine::params::owned(pairs);
        OutputOptions::parse(&raw, None).unwrap()
    }

    #[test]
    fn formats_without_alpha_flatten_onto_the_background() {
        let transparent = DynamicImage::new_rgba8(8, 8);
        for (bg, expected) in [("ffffff", [255, 255, 255]), ("ff0000", [255, 0, 0])] {
            for format in [Format::Jpeg, Format::Bmp] {
                let bytes = encode(&transparent, format, &options(&[("bg", bg)])).unwrap();
                let pixel = image::load_from_memory(&bytes)
                    .unwrap()
                    .to_rgb8()
                    .get_pixel(4, 4)
                    .0;
                let close = pixel.iter().zip(expected).all(|(a, b)| a.abs_diff(b) < 8);
                assert!(close, "{format} on {bg}: {pixel:?}");
            }
        }
    }

    #[test]
    fn every_writable_format_round_trips() {
        let image = DynamicImage::new_rgba8(16, 12);
        for format in Format::ALL {
            let bytes = encode(&image, format, &options(&[])).unwrap();
            if format == Format::Avif {
                assert_eq!(&bytes[4..12], b"ftypavif");
            } else {
                assert_eq!(Format::sniff(&bytes), Some(format));
                let decoded = image::load_from_memory(&bytes).unwrap();
                assert_eq!((decoded.width(), decoded.height()), (16, 12), "{format}");
            }
        }
    }

    #[test]
    fn webp_is_lossy_by_default_and_lossless_on_request() {
        let image = DynamicImage::new_rgb8(16, 16);
        let lossy = encode(&image, Format::WebP, &options(&[])).unwrap();
        let lossless = encode(&image, Format::WebP, &options(&[("lossless", "true")])).unwrap();
        assert_eq!(&lossy[12..16], b"VP8 ");
        assert_eq!(&lossless[12..16], b"VP8L");
    }
}
