//! Colour management: everything leaves the decoder as sRGB.
//!
//! Browsers assume sRGB for untagged images and encoders here write no profile, so a
//! photo tagged with another profile (Adobe RGB, Display P3, a camera's) is converted
//! with lcms2 rather than having its numbers reinterpreted, which would shift its
//! colours. CMYK JPEGs (print files) are converted through their embedded profile when
//! they have one, else with the plain formula, minding Adobe's inverted channels.

use image::{DynamicImage, GrayImage, RgbImage};
use lcms2::{Intent, PixelFormat, Profile, Transform};

/// Converts an 8-bit image tagged with `icc` to sRGB. Profiles that already describe
/// sRGB, and profiles lcms2 cannot read, leave the image as it is.
pub fn to_srgb(image: DynamicImage, icc: &[u8]) -> DynamicImage {
    let Ok(profile) = Profile::new_icc(icc) else {
        return image;
    };
    if is_srgb(&profile) {
        return image;
    }
    let srgb = Profile::new_srgb();
    match image {
        DynamicImage::ImageRgb8(mut rgb) => {
            if let Ok(transform) = Transform::<u8, u8>::new(
                &profile,
                PixelFormat::RGB_8,
                &srgb,
                PixelFormat::RGB_8,
                Intent::Perceptual,
            ) {
                transform.transform_in_place(&mut rgb);
            }
            DynamicImage::ImageRgb8(rgb)
        }
        DynamicImage::ImageRgba8(mut rgba) => {
            if let Ok(transform) = Transform::<u8, u8>::new(
                &profile,
                PixelFormat::RGBA_8,
                &srgb,
                PixelFormat::RGBA_8,
                Intent::Perceptual,
            ) {
                transform.transform_in_place(&mut rgba);
            }
            DynamicImage::ImageRgba8(rgba)
        }
        // Gray and 16-bit images are left as they are: their profiles are nearly always
        // gray gamma curves or sRGB, and a mismatch there does not shift hues.
        other => other,
    }
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
