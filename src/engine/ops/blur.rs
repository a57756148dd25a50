//! `blur`: a Gaussian blur of standard deviation `sigma` pixels (a fast box-filter
//! approximation, whose cost does not grow with sigma).

use image::DynamicImage;

use super::{canonical, Definition, Operation, Output, Produces};
use crate::engine::params::{ParamKind, ParamSpec};
use crate::error::Result;

pub static DEFINITION: Definition = Definition {
    name: "blur",
    summary: "Gaussian blur.",
    params: &[ParamSpec {
        name: "sigma",
        kind: ParamKind::Float {
            min: 0.1,
            max: 100.0,
        },
        default: Some("2"),
        doc: "Standard deviation in pixels.",
    }],
    produces: Produces::Image,
    build: |args| Ok(Box::new(Blur(args.float("sigma").unwrap_or(2.0) as f32))),
};

#[derive(Debug)]
struct Blur(f32);

impl Operation for Blur {
    fn key(&self) -> String {
        canonical("blur", &[("sigma", self.0.to_string())])
    }

    fn apply(&self, image: DynamicImage) -> Result<Output> {
        Ok(Output::Image(image.fast_blur(self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sharp_edge_becomes_a_ramp() {
        let image =
            image::GrayImage::from_fn(40, 1, |x, _| image::Luma([if x < 20 { 0 } else { 255 }]));
        let op = DEFINITION.build(&[("sigma".into(), "3".into())]).unwrap();
        let Output::Image(out) = op.apply(DynamicImage::ImageLuma8(image)).unwrap() else {
            panic!()
        };
        let edge = out.to_luma8().get_pixel(20, 0).0[0];
        assert!((60..200).contains(&edge), "{edge}");
        assert_eq!(op.key(), "blur(sigma=3)");
    }
}
