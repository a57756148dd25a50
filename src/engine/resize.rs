//! Resampling with fast_image_resize's SIMD convolution kernels.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;

use crate::error::{Error, Result};

/// Resamples `image` to exactly `width` x `height` with `filter`, keeping its pixel
/// layout. Alpha is premultiplied during the convolution so edges do not darken.
pub fn resize(
    image: &DynamicImage,
    width: u32,
    height: u32,
    filter: FilterType,
) -> Result<DynamicImage> {
    if (image.width(), image.height()) == (width, height) {
        return Ok(image.clone());
    }
    let mut target = DynamicImage::new(width, height, image.color());
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
    Resizer::new()
        .resize(image, &mut target, &options)
        .map_err(|err| Error::internal(format!("resizing failed: {err}")))?;
    Ok(target)
}

/// The largest size with `source`'s aspect ratio that fits inside `max_width` x
/// `max_height` (either may be unbounded), never larger than the source itself.
pub fn fit_within(
    source: (u32, u32),
    max_width: Option<u32>,
    max_height: Option<u32>,
) -> (u32, u32) {
    let (width, height) = (f64::from(source.0), f64::from(source.1));
    let scale_w = max_width.map_or(f64::INFINITY, |w| f64::from(w) / width);
    let scale_h = max_height.map_or(f64::INFINITY, |h| f64::from(h) / height);
    let scale = scale_w.min(scale_h).min(1.0);
    let scaled = |side: f64| ((side * scale).round() as u32).max(1);
    (scaled(width), scaled(height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_inside_the_box_keeping_the_aspect_ratio() {
        assert_eq!(fit_within((256, 192), Some(128), Some(128)), (128, 96));
        assert_eq!(fit_within((192, 256), Some(128), Some(128)), (96, 128));
        assert_eq!(fit_within((1000, 10), Some(100), None), (100, 1));
        assert_eq!(fit_within((50, 40), Some(128), Some(128)), (50, 40));
    }
}
