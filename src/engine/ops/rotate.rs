//! `rotate`: quarter turns clockwise (`deg=90|180|270`), lossless on the pixels.

use image::DynamicImage;

use super::{canonical, Definition, Operation, Output, Produces};
use crate::engine::params::{ParamKind, ParamSpec};
use crate::error::{Error, Result};

pub static DEFINITION: Definition = Definition {
    name: "rotate",
    summary: "Rotates clockwise by a quarter, half or three-quarter turn.",
    params: &[ParamSpec {
        name: "deg",
        kind: ParamKind::Choice {
            values: &["90", "180", "270"],
        },
        default: None,
        doc: "Degrees clockwise (required).",
    }],
    produces: Produces::Image,
    build: |args| match args.choice("deg") {
        Some(deg) => Ok(Box::new(Rotate(deg))),
        None => Err(Error::bad_request(
            "invalid_parameter",
            "transform 'rotate' needs 'deg' (90, 180 or 270)",
        )),
    },
};

#[derive(Debug)]
struct Rotate(&'static str);

impl Operation for Rotate {
    fn key(&self) -> String {
        canonical("rotate", &[("deg", self.0.to_string())])
    }

    fn apply(&self, image: DynamicImage) -> Result<Output> {
        Ok(Output::Image(match self.0 {
            "90" => image.rotate90(),
            "180" => image.rotate180(),
            _ => image.rotate270(),
        }))
    }

    fn output_size(&self, (width, height): (u32, u32)) -> (u32, u32) {
        if self.0 == "180" {
            (width, height)
        } else {
            (height, width)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarter_turns_swap_the_sides() {
        let op = DEFINITION.build(&[("deg".into(), "90".into())]).unwrap();
        let mut image = image::RgbImage::new(4, 2);
        image.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        let Output::Image(out) = op.apply(DynamicImage::ImageRgb8(image)).unwrap() else {
            panic!()
        };
        assert_eq!((out.width(), out.height()), (2, 4));
        // The top-left corner turns clockwise to the top-right.
        assert_eq!(out.to_rgb8().get_pixel(1, 0).0, [255, 0, 0]);
        assert!(DEFINITION.build(&[]).is_err());
    }
}
