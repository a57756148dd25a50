//! `sharpen`: an unsharp mask, `out = in + amount x (in - blur(in, sigma))`.

use image::{DynamicImage, Pixel};

use super::{canonical, Definition, Operation, Output, Produces};
use crate::engine::params::{ParamKind, ParamSpec};
use crate::error::Result;

pub static DEFINITION: Definition = Definition {
    name: "sharpen",
    summary: "Unsharp mask: strengthens edges.",
    params: &[
        ParamSpec {
            name: "amount",
            kind: ParamKind::Float {
                min: 0.0,
                max: 10.0,
            },
            default: Some("1"),
            doc: "How much of the detail to add back (0 changes nothing).",
        },
        ParamSpec {
            name: "sigma",
            kind: ParamKind::Float {
                min: 0.1,
                max: 10.0,
            },
            default: Some("1"),
            doc: "Radius of the detail, in pixels.",
        },
    ],
    produces: Produces::Image,
    build: |args| {
        Ok(Box::new(Sharpen {
            amount: args.float("amount").unwrap_or(1.0) as f32,
            sigma: args.float("sigma").unwrap_or(1.0) as f32,
        }))
    },
};

#[derive(Debug)]
struct Sharpen {
    amount: f32,
    sigma: f32,
}

impl Operation for Sharpen {
    fn key(&self) -> String {
        canonical(
            "sharpen",
            &[
                ("amount", self.amount.to_string()),
                ("sigma", self.sigma.to_string()),
            ],
        )
    }

    fn apply(&self, image: DynamicImage) -> Result<Output> {
        let mut sharp = image.to_rgba8();
        let blurred = DynamicImage::ImageRgba8(sharp.clone())
            .fast_blur(self.sigma)
            .into_rgba8();
        for (pixel, soft) in sharp.pixels_mut().zip(blurred.pixels()) {
            let alpha = pixel.0[3];
            pixel.apply2(soft, |c, s| {
                let detail = f32::from(c) - f32::from(s);
                (f32::from(c) + self.amount * detail)
                    .round()
                    .clamp(0.0, 255.0) as u8
            });
            pixel.0[3] = alpha;
        }
        let sharp = DynamicImage::ImageRgba8(sharp);
        Ok(Output::Image(
            match (image.color().has_color(), image.color().has_alpha()) {
                (true, true) => sharp,
                (true, false) => DynamicImage::ImageRgb8(sharp.into_rgb8()),
                (false, true) => DynamicImage::ImageLumaA8(sharp.into_luma_alpha8()),
                (false, false) => DynamicImage::ImageLuma8(sharp.into_luma8()),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_get_more_contrast() {
        let image =
            image::GrayImage::from_fn(40, 1, |x, _| image::Luma([if x < 20 { 100 } else { 150 }]));
        let op = DEFINITION.build(&[("amount".into(), "2".into())]).unwrap();
        let Output::Image(out) = op.apply(DynamicImage::ImageLuma8(image)).unwrap() else {
            panic!()
        };
        let out = out.to_luma8();
        assert!(out.get_pixel(19, 0).0[0] < 100 && out.get_pixel(20, 0).0[0] > 150);
        assert_eq!(out.get_pixel(5, 0).0[0], 100, "flat areas are untouched");
    }
}
