//! Geometry shared by the sizing transforms: fitting into a box, choosing where to
//! crop (gravity, including entropy), and resampling with fast_image_resize's SIMD
//! convolution kernels.

use std::f64::consts::PI;

use fast_image_resize::{Filter, FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, GenericImageView};

use crate::error::{Error, Result};

/// How an image meets a `w` x `h` box (the meanings of sharp and libvips).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Scale to fit inside, then pad to exactly the box with transparency.
    Contain,
    /// Scale to cover the box, then crop the overflow at `gravity`.
    Cover,
    /// Stretch to exactly the box, ignoring the aspect ratio.
    Fill,
    /// Scale to fit inside the box; the result may be smaller on one side.
    Inside,
    /// Scale to cover the box; the result may be larger on one side.
    Outside,
}

pub const FITS: &[&str] = &["contain", "cover", "fill", "inside", "outside"];

impl Fit {
    pub fn from_name(name: &str) -> Fit {
        match name {
            "contain" => Fit::Contain,
            "fill" => Fit::Fill,
            "inside" => Fit::Inside,
            "outside" => Fit::Outside,
            _ => Fit::Cover,
        }
    }
}

/// Where a crop window sits when the image is larger than it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gravity {
    /// A compass point: the fraction of the slack on the left and on top.
    Anchor(f64, f64),
    /// The window with the most detail (highest luminance entropy), as libvips does.
    Entropy,
}

pub const GRAVITIES: &[&str] = &[
    "center",
    "north",
    "south",
    "east",
    "west",
    "northeast",
    "northwest",
    "southeast",
    "southwest",
    "entropy",
];

impl Gravity {
    pub fn from_name(name: &str) -> Gravity {
        let anchor = |x, y| Gravity::Anchor(x, y);
        match name {
            "north" => anchor(0.5, 0.0),
            "south" => anchor(0.5, 1.0),
            "east" => anchor(1.0, 0.5),
            "west" => anchor(0.0, 0.5),
            "northeast" => anchor(1.0, 0.0),
            "northwest" => anchor(0.0, 0.0),
            "southeast" => anchor(1.0, 1.0),
            "southwest" => anchor(0.0, 1.0),
            "entropy" => Gravity::Entropy,
            _ => anchor(0.5, 0.5),
        }
    }

    /// The top-left corner of a `window` inside `image`.
    pub fn place(self, image: &DynamicImage, window: (u32, u32)) -> (u32, u32) {
        let slack = (
            image.width().saturating_sub(window.0),
            image.height().saturating_sub(window.1),
        );
        match self {
            Gravity::Anchor(x, y) => (
                (f64::from(slack.0) * x).round() as u32,
                (f64::from(slack.1) * y).round() as u32,
            ),
            Gravity::Entropy => most_detailed_window(image, window),
        }
    }
}

/// The resampling filters offered to clients.
pub const FILTERS: &[&str] = &["lanczos3", "catmullrom", "bilinear", "nearest"];

/// A client's filter name to fast_image_resize's algorithm.
pub fn algorithm(name: &str) -> ResizeAlg {
    match name {
        "catmullrom" => ResizeAlg::Convolution(FilterType::CatmullRom),
        "bilinear" => ResizeAlg::Convolution(FilterType::Bilinear),
        "nearest" => ResizeAlg::Nearest,
        _ => ResizeAlg::Convolution(FilterType::Custom(
            Filter::new("lanczos3", lanczos3, 3.0).expect("a finite, positive support"),
        )),
    }
}

/// fast_image_resize's Lanczos3 with one sine where it takes two. Its weights are
/// computed on every resize, and were 2.2% of a photo's thumbnail, most of it in
/// `sin`. With s = sin(πx/3), sin(πx) = 3s - 4s³, so
/// sinc(x)·sinc(x/3) = 3·sin(πx)·s/(πx)² = 3s²(3 - 4s²)/(πx)².
fn lanczos3(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    if !(-3.0..3.0).contains(&x) {
        return 0.0;
    }
    let s = (PI * x / 3.0).sin();
    let squared = s * s;
    3.0 * squared * (3.0 - 4.0 * squared) / (PI * x).powi(2)
}

/// A `w` x `h` request (either side may be absent) resolved against a source size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoxFit {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fit: Fit,
    pub upscale: bool,
}

/// What a [`BoxFit`] does to a given source: the size to resample to, and the final
/// canvas (larger for `contain`, smaller for `cover`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub scaled: (u32, u32),
    pub canvas: (u32, u32),
}

impl BoxFit {
    pub fn plan(&self, source: (u32, u32)) -> Plan {
        let (sw, sh) = (f64::from(source.0), f64::from(source.1));
        let limit = |scale: f64| if self.upscale { scale } else { scale.min(1.0) };
        let side = |length: f64, scale: f64| ((length * scale).round() as u32).max(1);
        let (bw, bh) = match (self.width, self.height) {
            (Some(w), Some(h)) => (f64::from(w), f64::from(h)),
            // One side alone: the other follows the aspect ratio, and every fit agrees.
            (Some(w), None) => (f64::from(w), sh * f64::from(w) / sw),
            (None, Some(h)) => (sw * f64::from(h) / sh, f64::from(h)),
            (None, None) => (sw, sh),
        };
        let (fit_w, fit_h) = (bw / sw, bh / sh);
        match self.fit {
            Fit::Fill => {
                let scaled = (side(sw, limit(fit_w)), side(sh, limit(fit_h)));
                Plan {
                    scaled,
                    canvas: scaled,
                }
            }
            Fit::Inside | Fit::Contain => {
                let scale = limit(fit_w.min(fit_h));
                let scaled = (side(sw, scale), side(sh, scale));
                let canvas = match self.fit {
                    Fit::Contain => (
                        (bw.round() as u32).max(scaled.0),
                        (bh.round() as u32).max(scaled.1),
                    ),
                    _ => scaled,
                };
                Plan { scaled, canvas }
            }
            Fit::Outside | Fit::Cover => {
                let scale = limit(fit_w.max(fit_h));
                let scaled = (side(sw, scale), side(sh, scale));
                let canvas = match self.fit {
                    Fit::Cover => (
                        scaled.0.min((bw.round() as u32).max(1)),
                        scaled.1.min((bh.round() as u32).max(1)),
                    ),
                    _ => scaled,
                };
                Plan { scaled, canvas }
            }
        }
    }

    /// The resampled size when it is smaller than `source` on both sides: what a
    /// decoder that shrinks on load must keep.
    pub fn shrink_hint(&self, source: (u32, u32)) -> Option<(u32, u32)> {
        let scaled = self.plan(source).scaled;
        (scaled.0 < source.0 && scaled.1 < source.1).then_some(scaled)
    }

    /// Applies the fit: resample, then crop (`cover`) or pad (`contain`).
    pub fn apply(
        &self,
        image: &DynamicImage,
        gravity: Gravity,
        algorithm: ResizeAlg,
    ) -> Result<DynamicImage> {
        let plan = self.plan((image.width(), image.height()));
        match self.fit {
            Fit::Cover if plan.canvas != plan.scaled => {
                // Crop in source coordinates first, so only the kept pixels are resampled.
                let scale_x = f64::from(image.width()) / f64::from(plan.scaled.0);
                let scale_y = f64::from(image.height()) / f64::from(plan.scaled.1);
                let window = (
                    ((f64::from(plan.canvas.0) * scale_x).round() as u32).clamp(1, image.width()),
                    ((f64::from(plan.canvas.1) * scale_y).round() as u32).clamp(1, image.height()),
                );
                let (x, y) = gravity.place(image, window);
                resample(
                    image,
                    Some((x, y, window.0, window.1)),
                    plan.canvas,
                    algorithm,
                )
            }
            Fit::Contain if plan.canvas != plan.scaled => {
                let scaled = resize(image, plan.scaled, algorithm)?.into_rgba8();
                let mut canvas = image::RgbaImage::new(plan.canvas.0, plan.canvas.1);
                let (x, y) = (
                    (plan.canvas.0 - plan.scaled.0) / 2,
                    (plan.canvas.1 - plan.scaled.1) / 2,
                );
                image::imageops::replace(&mut canvas, &scaled, i64::from(x), i64::from(y));
                Ok(DynamicImage::ImageRgba8(canvas))
            }
            _ => resize(image, plan.scaled, algorithm),
        }
    }
}

/// Resamples `image` to exactly `size`, keeping its pixel layout. Alpha is
/// premultiplied during the convolution so edges do not darken.
pub fn resize(
    image: &DynamicImage,
    size: (u32, u32),
    algorithm: ResizeAlg,
) -> Result<DynamicImage> {
    if (image.width(), image.height()) == size {
        return Ok(image.clone());
    }
    resample(image, None, size, algorithm)
}

/// Resamples the `crop` rectangle (x, y, w, h) of `image`, or all of it, to `size`.
/// Cropping happens inside the resampler: no intermediate copy.
pub fn resample(
    image: &DynamicImage,
    crop: Option<(u32, u32, u32, u32)>,
    size: (u32, u32),
    algorithm: ResizeAlg,
) -> Result<DynamicImage> {
    let mut target = DynamicImage::new(size.0, size.1, image.color());
    let mut options = ResizeOptions::new().resize_alg(algorithm);
    if let Some((x, y, w, h)) = crop {
        options = options.crop(f64::from(x), f64::from(y), f64::from(w), f64::from(h));
    }
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
    let fit = BoxFit {
        width: max_width,
        height: max_height,
        fit: Fit::Inside,
        upscale: false,
    };
    fit.plan(source).scaled
}

/// Slides `window` along the axis where it is smaller than `image` and returns the
/// placement whose luminance histogram has the highest entropy. Works on a copy of
/// at most 256 px on the long side, so it costs little whatever the image size.
fn most_detailed_window(image: &DynamicImage, window: (u32, u32)) -> (u32, u32) {
    let (width, height) = (image.width(), image.height());
    let shrink = (f64::from(width.max(height)) / 256.0).max(1.0);
    let small_size = (
        ((f64::from(width) / shrink) as u32).max(1),
        ((f64::from(height) / shrink) as u32).max(1),
    );
    let small = match resize(
        &DynamicImage::ImageLuma8(image.to_luma8()),
        small_size,
        ResizeAlg::Convolution(FilterType::Box),
    ) {
        Ok(small) => small.into_luma8(),
        Err(_) => return Gravity::Anchor(0.5, 0.5).place(image, window),
    };
    let small_window = (
        ((f64::from(window.0) / shrink) as u32).clamp(1, small.width()),
        ((f64::from(window.1) / shrink) as u32).clamp(1, small.height()),
    );
    let horizontal = width - window.0 >= height - window.1;
    let positions = if horizontal {
        small.width() - small_window.0
    } else {
        small.height() - small_window.1
    };
    let entropy_at = |offset: u32| {
        let (x, y) = if horizontal { (offset, 0) } else { (0, offset) };
        let mut histogram = [0u32; 256];
        for (_, _, pixel) in small.view(x, y, small_window.0, small_window.1).pixels() {
            histogram[usize::from(pixel.0[0])] += 1;
        }
        let total = f64::from(small_window.0 * small_window.1);
        histogram
            .iter()
            .filter(|&&count| count > 0)
            .map(|&count| {
                let p = f64::from(count) / total;
                -p * p.log2()
            })
            .sum::<f64>()
    };
    let step = (positions / 32).max(1);
    let best = (0..=positions)
        .step_by(step as usize)
        .map(|offset| (offset, entropy_at(offset)))
        .fold((0, f64::MIN), |best, candidate| {
            if candidate.1 > best.1 {
                candidate
            } else {
                best
            }
        })
        .0;
    let offset = (f64::from(best) * shrink).round() as u32;
    if horizontal {
        (offset.min(width - window.0), (height - window.1) / 2)
    } else {
        ((width - window.0) / 2, offset.min(height - window.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanczos3_with_one_sine_is_fast_image_resizes() {
        let sinc = |x: f64| {
            if x == 0.0 {
                1.0
            } else {
                (PI * x).sin() / (PI * x)
            }
        };
        for step in -400..=400 {
            let x = f64::from(step) / 100.0;
            let expected = if x.abs() < 3.0 {
                sinc(x) * sinc(x / 3.0)
            } else {
                0.0
            };
            assert!((lanczos3(x) - expected).abs() < 1e-12, "at {x}");
        }
        // And resamples to the same bytes, down and up, from noise.
        let mut state = 0x2545_F491u32;
        let noise = image::RgbImage::from_fn(331, 217, |_, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let [r, g, b, _] = state.to_le_bytes();
            image::Rgb([r, g, b])
        });
        let noise = DynamicImage::ImageRgb8(noise);
        for size in [(100, 66), (37, 217), (700, 459)] {
            let ours = resample(&noise, None, size, algorithm("lanczos3")).unwrap();
            let theirs = resample(
                &noise,
                None,
                size,
                ResizeAlg::Convolution(FilterType::Lanczos3),
            )
            .unwrap();
            assert_eq!(ours.as_bytes(), theirs.as_bytes(), "{size:?}");
        }
    }

    fn plan(w: Option<u32>, h: Option<u32>, fit: Fit, upscale: bool, source: (u32, u32)) -> Plan {
        BoxFit {
            width: w,
            height: h,
            fit,
            upscale,
        }
        .plan(source)
    }

    #[test]
    fn fits_inside_the_box_keeping_the_aspect_ratio() {
        assert_eq!(fit_within((256, 192), Some(128), Some(128)), (128, 96));
        assert_eq!(fit_within((192, 256), Some(128), Some(128)), (96, 128));
        assert_eq!(fit_within((1000, 10), Some(100), None), (100, 1));
        assert_eq!(fit_within((50, 40), Some(128), Some(128)), (50, 40));
    }

    #[test]
    fn every_fit_has_the_meaning_of_sharp() {
        let source = (400, 200);
        let p = |fit| plan(Some(100), Some(100), fit, false, source);
        assert_eq!(
            p(Fit::Inside),
            Plan {
                scaled: (100, 50),
                canvas: (100, 50)
            }
        );
        assert_eq!(
            p(Fit::Contain),
            Plan {
                scaled: (100, 50),
                canvas: (100, 100)
            }
        );
        assert_eq!(
            p(Fit::Cover),
            Plan {
                scaled: (200, 100),
                canvas: (100, 100)
            }
        );
        assert_eq!(
            p(Fit::Outside),
            Plan {
                scaled: (200, 100),
                canvas: (200, 100)
            }
        );
        assert_eq!(
            p(Fit::Fill),
            Plan {
                scaled: (100, 100),
                canvas: (100, 100)
            }
        );
        // Without upscale a small image keeps its size; with it, it grows.
        assert_eq!(
            plan(Some(800), None, Fit::Cover, false, source).scaled,
            (400, 200)
        );
        assert_eq!(
            plan(Some(800), None, Fit::Cover, true, source).scaled,
            (800, 400)
        );
    }

    #[test]
    fn entropy_gravity_finds_the_detailed_part() {
        // Flat grey on the left, noise on the right: a square crop belongs on the right.
        let mut state = 7u32;
        let image = image::GrayImage::from_fn(300, 100, |x, _| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            image::Luma([if x < 200 { 128 } else { (state >> 16) as u8 }])
        });
        let (x, y) = Gravity::Entropy.place(&DynamicImage::ImageLuma8(image), (100, 100));
        assert!(x >= 180, "x = {x}");
        assert_eq!(y, 0);
    }
}
