//! Colour management: everything leaves the decoder as sRGB.
//!
//! Browsers assume sRGB for untagged images and encoders here write no profile, so a
//! photo tagged with another profile (Adobe RGB, Display P3, a camera's) is converted
//! with lcms2 rather than having its numbers reinterpreted, which would shift its
//! colours. CMYK JPEGs (print files) are converted through their embedded profile when
//! they have one, else with the plain formula, minding Adobe's inverted channels.

use image::{DynamicImage, GrayImage, RgbImage};
use lcms2::{CIExyY, ColorSpaceSignature, Intent, PixelFormat, Pod, Profile, ToneCurve, Transform};

/// Converts an image tagged with `icc` to sRGB, at 8 or 16 bits, with or without
/// alpha. A gray profile (Photoshop's "Dot Gain 20%", a gamma curve) maps gray images
/// to gray with sRGB's tone curve, so their midtones stay where they were meant to be.
/// Profiles that already describe sRGB, profiles lcms2 cannot read, and profiles that
/// do not fit the pixels (a colour profile on a gray image) leave the image as it is.
pub fn to_srgb(image: DynamicImage, icc: &[u8]) -> DynamicImage {
    let Ok(profile) = Profile::new_icc(icc) else {
        return image;
    };
    if is_srgb(&profile) {
        return image;
    }
    let gray = profile.color_space() == ColorSpaceSignature::GrayData;
    let Some(target) = (match gray {
        true => srgb_gray(),
        false => Some(Profile::new_srgb()),
    }) else {
        return image;
    };
    let convert = Conversion {
        from: &profile,
        to: &target,
        gray,
    };
    match image {
        DynamicImage::ImageRgb8(mut pixels) => {
            convert.colour(PixelFormat::RGB_8, &mut pixels);
            DynamicImage::ImageRgb8(pixels)
        }
        DynamicImage::ImageRgba8(mut pixels) => {
            convert.colour(PixelFormat::RGBA_8, &mut pixels);
            DynamicImage::ImageRgba8(pixels)
        }
        DynamicImage::ImageRgb16(mut pixels) => {
            convert.colour(PixelFormat::RGB_16, pixels.as_chunks_mut::<3>().0);
            DynamicImage::ImageRgb16(pixels)
        }
        DynamicImage::ImageRgba16(mut pixels) => {
            convert.colour(PixelFormat::RGBA_16, pixels.as_chunks_mut::<4>().0);
            DynamicImage::ImageRgba16(pixels)
        }
        DynamicImage::ImageLuma8(mut pixels) => {
            convert.gray(PixelFormat::GRAY_8, &mut pixels);
            DynamicImage::ImageLuma8(pixels)
        }
        DynamicImage::ImageLumaA8(mut pixels) => {
            convert.gray(PixelFormat::GRAYA_8, &mut pixels);
            DynamicImage::ImageLumaA8(pixels)
        }
        DynamicImage::ImageLuma16(mut pixels) => {
            convert.gray(PixelFormat::GRAY_16, &mut pixels);
            DynamicImage::ImageLuma16(pixels)
        }
        DynamicImage::ImageLumaA16(mut pixels) => {
            convert.gray(PixelFormat::GRAYA_16, pixels.as_chunks_mut::<2>().0);
            DynamicImage::ImageLumaA16(pixels)
        }
        // 32-bit float images come from formats that carry no ICC profile here.
        other => other,
    }
}

/// A transform between two profiles, applied to pixels whose layout fits the source.
struct Conversion<'a> {
    from: &'a Profile,
    to: &'a Profile,
    /// Whether the source profile is a gray one.
    gray: bool,
}

impl Conversion<'_> {
    fn colour<P: Copy + Pod>(&self, format: PixelFormat, pixels: &mut [P]) {
        if !self.gray {
            self.apply(format, pixels);
        }
    }

    fn gray<P: Copy + Pod>(&self, format: PixelFormat, pixels: &mut [P]) {
        if self.gray {
            self.apply(format, pixels);
        }
    }

    fn apply<P: Copy + Pod>(&self, format: PixelFormat, pixels: &mut [P]) {
        if let Ok(transform) =
            Transform::<P, P>::new(self.from, format, self.to, format, Intent::Perceptual)
        {
            transform.transform_in_place(pixels);
        }
    }
}

/// Gray with sRGB's tone curve and D65 white: what a browser shows an untagged gray
/// image as.
fn srgb_gray() -> Option<Profile> {
    let curve =
        ToneCurve::new_parametric(4, &[2.4, 1.0 / 1.055, 0.055 / 1.055, 1.0 / 12.92, 0.04045])
            .ok()?;
    let d65 = CIExyY {
        x: 0.3127,
        y: 0.3290,
        Y: 1.0,
    };
    Profile::new_gray(&d65, &curve).ok()
}

fn is_srgb(profile: &Profile) -> bool {
    profile
        .info(lcms2::InfoType::Description, lcms2::Locale::none())
        .is_some_and(|name| name.to_ascii_lowercase().contains("srgb"))
}

/// CMYK pixels (four bytes each) to sRGB. `inverted` is set for Adobe's JPEGs, which
/// store 255 - value in every channel.
pub fn cmyk_to_rgb(
    width: u32,
    height: u32,
    cmyk: &[u8],
    icc: Option<&[u8]>,
    inverted: bool,
) -> RgbImage {
    let mut rgb = RgbImage::new(width, height);
    let profile = icc
        .and_then(|icc| Profile::new_icc(icc).ok())
        .filter(|p| p.color_space() == lcms2::ColorSpaceSignature::CmykData);
    if let Some(profile) = profile {
        let format = if inverted {
            PixelFormat::CMYK_8_REV
        } else {
            PixelFormat::CMYK_8
        };
        if let Ok(transform) = Transform::<u8, u8>::new(
            &profile,
            format,
            &Profile::new_srgb(),
            PixelFormat::RGB_8,
            Intent::Perceptual,
        ) {
            transform.transform_pixels(cmyk, &mut rgb);
            return rgb;
        }
    }
    for (out, pixel) in rgb.pixels_mut().zip(cmyk.chunks_exact(4)) {
        let ink = |v: u8| {
            if inverted {
                255 - u16::from(v)
            } else {
                u16::from(v)
            }
        };
        let k = ink(pixel[3]);
        let channel = |c: u8| ((255 - ink(c)) * (255 - k) / 255) as u8;
        out.0 = [channel(pixel[0]), channel(pixel[1]), channel(pixel[2])];
    }
    rgb
}

/// A gray image from raw samples, for decoders that hand back bare buffers.
pub fn gray(width: u32, height: u32, samples: Vec<u8>) -> Option<DynamicImage> {
    GrayImage::from_raw(width, height, samples).map(DynamicImage::ImageLuma8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adobe_cmyk_white_and_black() {
        // Inverted storage: no ink is 255, full black ink is K = 0.
        let rgb = cmyk_to_rgb(2, 1, &[255, 255, 255, 255, 255, 255, 255, 0], None, true);
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [0, 0, 0]);
    }

    #[test]
    fn an_srgb_profile_changes_nothing() {
        let srgb = Profile::new_srgb().icc().unwrap();
        let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(1, 1, image::Rgb([10, 200, 30])));
        assert_eq!(to_srgb(image.clone(), &srgb), image);
    }
}
