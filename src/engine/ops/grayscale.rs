//! `grayscale`: luminance only (Rec. 601 weights), keeping alpha and bit depth.

use image::DynamicImage;

use super::{Definition, Operation, Output, Produces};
use crate::error::Result;

pub static DEFINITION: Definition = Definition {
    name: "grayscale",
    summary: "Converts to shades of grey, keeping transparency.",
    params: &[],
    produces: Produces::Image,
    build: |_| Ok(Box::new(Grayscale)),
};

#[derive(Debug)]
struct Grayscale;

impl Operation for Grayscale {
    fn key(&self) -> String {
        "grayscale".to_string()
    }

    fn apply(&self, image: DynamicImage) -> Result<Output> {
        Ok(Output::Image(image.grayscale()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_becomes_grey_and_alpha_stays() {
        let image = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            2,
            2,
            image::Rgba([255, 0, 0, 100]),
        ));
        let Output::Image(out) = Grayscale.apply(image).unwrap() else {
            panic!()
        };
        assert!(!out.color().has_color());
        assert_eq!(out.to_luma_alpha8().get_pixel(0, 0).0[1], 100);
    }
}
