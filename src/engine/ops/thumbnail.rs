//! `thumbnail`: the image scaled down to fit inside a box, keeping its aspect ratio.
//!
//! `size=N` is a square box; `w` and `h` set either side (one alone leaves the other
//! unbounded); the default box is 128x128. Thumbnails never enlarge: an image already
//! inside the box keeps its size. `fit=cover` fills the box instead and crops the
//! overflow around the centre, for square avatars. Resampling is Lanczos3.

use image::DynamicImage;

use super::{canonical, Definition, Operation, Output, Produces};
use crate::engine::params::{Args, ParamKind, ParamSpec};
use crate::engine::resize::{algorithm, BoxFit, Fit, Gravity};
use crate::error::Result;

const SIDE: ParamKind = ParamKind::Int { min: 1, max: 4096 };
const DEFAULT_BOX: u32 = 128;

pub static DEFINITION: Definition = Definition {
    name: "thumbnail",
    summary: "Scales the image down to fit inside a box (or, with fit=cover, to fill it), keeping its aspect ratio.",
    params: &[
        ParamSpec { name: "size", kind: SIDE, default: None, doc: "Side of a square box; w and h override it." },
        ParamSpec { name: "w", kind: SIDE, default: None, doc: "Box width; alone, the height is unbounded." },
        ParamSpec { name: "h", kind: SIDE, default: None, doc: "Box height; alone, the width is unbounded." },
        ParamSpec {
            name: "fit",
            kind: ParamKind::Choice { values: &["inside", "cover"] },
            default: Some("inside"),
            doc: "inside: fit within the box; cover: fill it, cropping around the centre.",
        },
    ],
    produces: Produces::Image,
    build: |args| Ok(Box::new(Thumbnail::from_args(args))),
};

#[derive(Debug, PartialEq, Eq)]
struct Thumbnail {
    fit: BoxFit,
}

impl Thumbnail {
    fn from_args(args: &Args) -> Self {
        let size = args.pixels("size");
        let (width, height) = match (args.pixels("w").or(size), args.pixels("h").or(size)) {
            (None, None) => (Some(DEFAULT_BOX), Some(DEFAULT_BOX)),
            sides => sides,
        };
        let fit = if args.choice("fit") == Some("cover") {
            Fit::Cover
        } else {
            Fit::Inside
        };
        Self {
            fit: BoxFit {
                width,
                height,
                fit,
                upscale: false,
            },
        }
    }
}

impl Operation for Thumbnail {
    fn key(&self) -> String {
        let mut params = Vec::new();
        if let Some(w) = self.fit.width {
            params.push(("w", w.to_string()));
        }
        if let Some(h) = self.fit.height {
            params.push(("h", h.to_string()));
        }
        if self.fit.fit == Fit::Cover {
            params.push(("fit", "cover".to_string()));
        }
        canonical("thumbnail", &params)
    }

    fn apply(&self, image: DynamicImage) -> Result<Output> {
        let image = self
            .fit
            .apply(&image, Gravity::from_name("center"), algorithm("lanczos3"))?;
        Ok(Output::Image(image))
    }

    fn output_size(&self, input: (u32, u32)) -> (u32, u32) {
        self.fit.plan(input).canvas
    }

    fn shrink_hint(&self, input: (u32, u32)) -> Option<(u32, u32)> {
        self.fit.shrink_hint(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pairs: &[(&str, &str)]) -> String {
        let raw = crate::engine::params::owned(pairs);
        DEFINITION.build(&raw).unwrap().key()
    }

    #[test]
    fn equivalent_requests_share_a_key() {
        assert_eq!(key(&[]), "thumbnail(w=128,h=128)");
        assert_eq!(key(&[("size", "128")]), key(&[]));
        assert_eq!(key(&[("fit", "inside")]), key(&[]));
        assert_eq!(
            key(&[("w", "100"), ("h", "50")]),
            key(&[("h", "50"), ("w", "100")])
        );
        assert_eq!(key(&[("w", "300")]), "thumbnail(w=300)");
        assert_eq!(
            key(&[("size", "96"), ("fit", "cover")]),
            "thumbnail(w=96,h=96,fit=cover)"
        );
    }

    #[test]
    fn cover_makes_square_avatars() {
        let op = DEFINITION
            .build(&[("size".into(), "96".into()), ("fit".into(), "cover".into())])
            .unwrap();
        assert_eq!(op.output_size((400, 300)), (96, 96));
        let Output::Image(avatar) = op.apply(DynamicImage::new_rgb8(400, 300)).unwrap() else {
            panic!()
        };
        assert_eq!((avatar.width(), avatar.height()), (96, 96));
    }
}
