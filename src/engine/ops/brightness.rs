//! `brightness`: adds `amount` percent of full scale to every channel (-100..100).

use image::DynamicImage;

use super::{canonical, Definition, Operation, Output, Produces};
use crate::engine::params::{ParamKind, ParamSpec};
use crate::error::Result;

pub static DEFINITION: Definition = Definition {
    name: "brightness",
    summary: "Lightens (positive) or darkens (negative) the image.",
    params: &[ParamSpec {
        name: "amount",
        kind: ParamKind::Int {
            min: -100,
            max: 100,
        },
        default: Some("10"),
        doc: "Percent of full scale added to each channel.",
    }],
    produces: Produces::Image,
    build: |args| Ok(Box::new(Brightness(args.int("amount").unwrap_or(10)))),
};

#[derive(Debug)]
struct Brightness(i64);

impl Operation for Brightness {
    fn key(&self) -> String {
        canonical("brightness", &[("amount", self.0.to_string())])
    }

    fn apply(&self, image: DynamicImage) -> Result<Output> {
        // brighten() works in the image's own scale: 255 for 8-bit, 65535 for 16-bit.
        let full_scale = if image.color().bytes_per_pixel() / image.color().channel_count() > 1 {
            65535
        } else {
            255
        };
        Ok(Output::Image(
            image.brighten((self.0 * full_scale / 100) as i32),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_lightens_negative_darkens() {
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(1, 1, image::Luma([100])));
        for (amount, expected) in [("20", 151), ("-20", 49)] {
            let op = DEFINITION
                .build(&[("amount".into(), amount.into())])
                .unwrap();
            let Output::Image(out) = op.apply(grey.clone()).unwrap() else {
                panic!()
            };
            assert_eq!(out.to_luma8().get_pixel(0, 0).0[0], expected);
        }
    }
}
