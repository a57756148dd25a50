//! `thumbnail`: the image scaled down to fit inside a box, keeping its aspect ratio.
//!
//! `size=N` is a square box; `w` and `h` set either side (one alone leaves the other
//! unbounded); the default box is 128x128. Thumbnails never enlarge: an image already
//! inside the box keeps its size. Resampling is Lanczos3, the quality reference.

use fast_image_resize::FilterType;
use image::DynamicImage;

use super::{canonical, Definition, Operation, Output, Produces};
use crate::engine::params::{Args, ParamKind, ParamSpec};
use crate::engine::resize::{fit_within, resize};
use crate::error::Result;

const SIDE: ParamKind = ParamKind::Int { min: 1, max: 4096 };
const DEFAULT_BOX: u32 = 128;

pub static DEFINITION: Definition = Definition {
    name: "thumbnail",
    summary: "Scales the image down to fit inside a box, keeping its aspect ratio.",
    params: &[
        ParamSpec {
            name: "size",
            kind: SIDE,
            default: None,
            doc: "Side of a square box; w and h override it.",
        },
        ParamSpec {
            name: "w",
            kind: SIDE,
            default: None,
            doc: "Box width; alone, the height is unbounded.",
        },
        ParamSpec {
            name: "h",
            kind: SIDE,
            default: None,
            doc: "Box height; alone, the width is unbounded.",
        },
    ],
    produces: Produces::Image,
    build: |args| Ok(Box::new(Thumbnail::from_args(args))),
};

#[derive(Debug, PartialEq, Eq)]
struct Thumbnail {
    width: Option<u32>,
    height: Option<u32>,
}

impl Thumbnail {
    fn from_args(args: &Args) -> Self {
        let side = |name| args.int(name).map(|v| v as u32);
        let size = side("size");
        match (side("w").or(size), side("h").or(size)) {
            (None, None) => Self {
                width: Some(DEFAULT_BOX),
                height: Some(DEFAULT_BOX),
            },
            (width, height) => Self { width, height },
        }
    }
}

impl Operation for Thumbnail {
    fn key(&self) -> String {
        let mut params = Vec::new();
        if let Some(w) = self.width {
            params.push(("w", w.to_string()));
        }
        if let Some(h) = self.height {
            params.push(("h", h.to_string()));
        }
        canonical("thumbnail", &params)
    }

    fn apply(&self, image: DynamicImage) -> Result<Output> {
        let (width, height) = fit_within((image.width(), image.height()), self.width, self.height);
        Ok(Output::Image(resize(
            &image,
            width,
            height,
            FilterType::Lanczos3,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pairs: &[(&str, &str)]) -> String {
        let raw: Vec<_> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DEFINITION.build(&raw).unwrap().key()
    }

    #[test]
    fn equivalent_requests_share_a_key() {
        assert_eq!(key(&[]), "thumbnail(w=128,h=128)");
        assert_eq!(key(&[("size", "128")]), key(&[]));
        assert_eq!(
            key(&[("w", "100"), ("h", "50")]),
            key(&[("h", "50"), ("w", "100")])
        );
        assert_eq!(key(&[("w", "300")]), "thumbnail(w=300)");
    }
}
