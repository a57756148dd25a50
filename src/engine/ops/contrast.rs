//! `contrast`: stretches (positive) or flattens (negative) tones around mid-grey.

use image::DynamicImage;

use super::{canonical, Definition, Operation, Output, Produces};
use crate::engine::params::{ParamKind, ParamSpec};
use crate::error::Result;

pub static DEFINITION: Definition = Definition {
    name: "contrast",
    summary: "Increases (positive) or decreases (negative) contrast.",
    params: &[ParamSpec {
        name: "amount",
        kind: ParamKind::Int {
            min: -100,
            max: 100,
        },
        default: Some("10"),
        doc: "Percent change of contrast.",
    }],
    produces: Produces::Image,
    build: |args| Ok(Box::new(Contrast(args.int("amount").unwrap_or(10)))),
};

#[derive(Debug)]
struct Contrast(i64);

impl Operation for Contrast {
    fn key(&self) -> String {
        canonical("contrast", &[("amount", self.0.to_string())])
    }

    fn apply(&self, image: DynamicImage) -> Result<Output> {
        Ok(Output::Image(image.adjust_contrast(self.0 as f32)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tones_move_away_from_mid_grey() {
        let image = DynamicImage::ImageLuma8(image::GrayImage::from_fn(2, 1, |x, _| {
            image::Luma([if x == 0 { 64 } else { 192 }])
        }));
        let op = DEFINITION.build(&[("amount".into(), "50".into())]).unwrap();
        let Output::Image(out) = op.apply(image).unwrap() else {
            panic!()
        };
        let out = out.to_luma8();
        assert!(out.get_pixel(0, 0).0[0] < 64 && out.get_pixel(1, 0).0[0] > 192);
    }
}
