//! Encoding: pixels to bytes in the requested format.
//!
//! Each encoder gets the pixel layout it can hold: JPEG has no alpha, so transparent
//! pixels are flattened onto white rather than turning black; 16-bit images are
//! reduced to 8 bits for the formats that cannot carry more.

use std::io::Cursor;

use image::codecs::gif::GifEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, ImageError, Rgb, RgbImage};

use crate::engine::Format;
use crate::error::{Error, Result};

/// Encodes `image` as `format`; `quality` (1-100) matters for lossy formats only.
pub fn encode(image: &DynamicImage, format: Format, quality: u8) -> Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    let written = match format {
        Format::Jpeg => {
            let encoder = JpegEncoder::new_with_quality(&mut out, quality);
            if image.color().has_color() {
                flatten_onto_white(image).write_with_encoder(encoder)
            } else {
                image.to_luma8().write_with_encoder(encoder)
            }
        }
        Format::Png => {
            let encoder =
                PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive);
            image.write_with_encoder(encoder)
        }
        Format::WebP => {
            let encoder = WebPEncoder::new_lossless(&mut out);
            if image.color().has_alpha() {
                image.to_rgba8().write_with_encoder(encoder)
            } else {
                image.to_rgb8().write_with_encoder(encoder)
            }
        }
        Format::Gif => {
            let mut encoder = GifEncoder::new_with_speed(&mut out, 10);
            encoder.encode_frame(image::Frame::new(image.to_rgba8()))
        }
        Format::Bmp | Format::Tiff => {
            return Err(Error::bad_request(
                "invalid_parameter",
                format!("the engine cannot write {format}"),
            ))
        }
    };
    written
        .map_err(|err: ImageError| Error::internal(format!("encoding {format} failed: {err}")))?;
    Ok(out.into_inner())
}

/// RGB pixels with any transparency composited over white.
pub fn flatten_onto_white(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over =
            |c: u8| ((u16::from(c) * u16::from(a) + 255 * u16::from(255 - a) + 127) / 255) as u8;
        Rgb([over(r), over(g), over(b)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_flattens_transparency_onto_white() {
        let transparent = DynamicImage::new_rgba8(8, 8);
        let bytes = encode(&transparent, Format::Jpeg, 90).unwrap();
        let decoded = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert!(decoded.get_pixel(4, 4).0.iter().all(|&c| c > 245));
    }
}
