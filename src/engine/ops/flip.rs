//! `flip`: mirror horizontally (`axis=h`, left becomes right) or vertically (`axis=v`).

use image::DynamicImage;

use super::{canonical, Definition, Operation, Output, Produces};
use crate::engine::params::{ParamKind, ParamSpec};
use crate::error::Result;

pub static DEFINITION: Definition = Definition {
    name: "flip",
    summary: "Mirrors the image horizontally or vertically.",
    params: &[ParamSpec {
        name: "axis",
        kind: ParamKind::Choice {
            values: &["h", "v"],
        },
        default: Some("h"),
        doc: "h: left becomes right; v: top becomes bottom.",
    }],
    produces: Produces::Image,
    build: |args| Ok(Box::new(Flip(args.choice("axis") == Some("v")))),
};

/// `true` for vertical.
#[derive(Debug)]
struct Flip(bool);

impl Operation for Flip {
    fn key(&self) -> String {
        canonical(
            "flip",
            &[("axis", if self.0 { "v" } else { "h" }.to_string())],
        )
    }

    fn apply(&self, image: DynamicImage) -> Result<Output> {
        Ok(Output::Image(if self.0 {
            image.flipv()
        } else {
            image.fliph()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizontal_flip_moves_left_to_right() {
        let mut image = image::GrayImage::new(3, 1);
        image.put_pixel(0, 0, image::Luma([200]));
        let op = DEFINITION.build(&[]).unwrap();
        let Output::Image(out) = op.apply(DynamicImage::ImageLuma8(image)).unwrap() else {
            panic!()
        };
        assert_eq!(out.to_luma8().get_pixel(2, 0).0, [200]);
    }
}
