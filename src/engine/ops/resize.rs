//! `resize`: scale to a width and/or height, with the box semantics of sharp.
//!
//! `fit` says how the image meets a `w` x `h` box: `cover` (the default: fill it and
//! crop the overflow at `gravity`, `entropy` choosing the most detailed part),
//! `contain` (fit inside and pad with transparency, which JPEG flattens onto `bg`),
//! `fill` (stretch), `inside`, `outside`. With one side only, the other follows the
//! aspect ratio. The image is never enlarged unless `upscale=true`.

use image::DynamicImage;

use super::{canonical, Definition, Operation, Output, Produces};
use crate::engine::params::{Args, ParamKind, ParamSpec};
use crate::engine::resize::{algorithm, BoxFit, Fit, Gravity, FILTERS, FITS, GRAVITIES};
use crate::error::{Error, Result};

const SIDE: ParamKind = ParamKind::Int { min: 1, max: 16384 };

pub static DEFINITION: Definition = Definition {
    name: "resize",
    summary: "Scales to a width and/or height; fit decides how the image meets the box.",
    params: &[
        ParamSpec {
            name: "w",
            kind: SIDE,
            default: None,
            doc: "Target width.",
        },
        ParamSpec {
            name: "h",
            kind: SIDE,
            default: None,
            doc: "Target height.",
        },
        ParamSpec {
            name: "fit",
            kind: ParamKind::Choice { values: FITS },
            default: Some("cover"),
            doc: "cover, contain, fill, inside or outside.",
        },
        ParamSpec {
            name: "gravity",
            kind: ParamKind::Choice { values: GRAVITIES },
            default: Some("center"),
            doc: "Where cover crops: a compass point, or entropy (the most detailed part).",
        },
        ParamSpec {
            name: "upscale",
            kind: ParamKind::Bool,
            default: Some("false"),
            doc: "Allow enlarging a smaller image.",
        },
        ParamSpec {
            name: "filter",
            kind: ParamKind::Choice { values: FILTERS },
            default: Some("lanczos3"),
            doc: "Resampling filter.",
        },
    ],
    produces: Produces::Image,
    build: |args| Resize::from_args(args).map(|r| Box::new(r) as _),
};

#[derive(Debug)]
struct Resize {
    fit: BoxFit,
    fit_name: &'static str,
    gravity: &'static str,
    filter: &'static str,
}

impl Resize {
    fn from_args(args: &Args) -> Result<Self> {
        let (width, height) = (args.pixels("w"), args.pixels("h"));
        if width.is_none() && height.is_none() {
            return Err(Error::bad_request(
                "invalid_parameter",
                "transform 'resize' needs 'w', 'h' or both",
            ));
        }
        let fit_name = args.choice("fit").unwrap_or("cover");
        Ok(Self {
            fit: BoxFit {
                width,
                height,
                fit: Fit::from_name(fit_name),
                upscale: args.bool("upscale").unwrap_or(false),
            },
            fit_name,
            gravity: args.choice("gravity").unwrap_or("center"),
            filter: args.choice("filter").unwrap_or("lanczos3"),
        })
    }
}

impl Operation for Resize {
    fn key(&self) -> String {
        let mut params = Vec::new();
        if let Some(w) = self.fit.width {
            params.push(("w", w.to_string()));
        }
        if let Some(h) = self.fit.height {
            params.push(("h", h.to_string()));
        }
        params.push(("fit", self.fit_name.to_string()));
        // Gravity only matters where something is cropped.
        if self.fit.fit == Fit::Cover && self.fit.width.is_some() && self.fit.height.is_some() {
            params.push(("gravity", self.gravity.to_string()));
        }
        params.push(("upscale", self.fit.upscale.to_string()));
        params.push(("filter", self.filter.to_string()));
        canonical("resize", &params)
    }

    fn apply(&self, image: DynamicImage) -> Result<Output> {
        let resized = self.fit.apply(
            &image,
            Gravity::from_name(self.gravity),
            algorithm(self.filter),
        )?;
        Ok(Output::Image(resized))
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

    fn resize(pairs: &[(&str, &str)]) -> Box<dyn Operation> {
        let raw = crate::engine::params::owned(pairs);
        DEFINITION.build(&raw).unwrap()
    }

    #[test]
    fn sizes_follow_the_fit() {
        let source = DynamicImage::new_rgb8(400, 200);
        for (pairs, expected) in [
            (&[("w", "100"), ("h", "100")][..], (100, 100)),
            (&[("w", "100"), ("h", "100"), ("fit", "inside")], (100, 50)),
            (
                &[("w", "100"), ("h", "100"), ("fit", "contain")],
                (100, 100),
            ),
            (
                &[("w", "100"), ("h", "100"), ("fit", "outside")],
                (200, 100),
            ),
            (&[("w", "100"), ("h", "100"), ("fit", "fill")], (100, 100)),
            (&[("w", "200")], (200, 100)),
            (&[("h", "50"), ("filter", "nearest")], (100, 50)),
            (&[("w", "800")], (400, 200)),
            (&[("w", "800"), ("upscale", "true")], (800, 400)),
        ] {
            let op = resize(pairs);
            let Output::Image(out) = op.apply(source.clone()).unwrap() else {
                panic!()
            };
            assert_eq!((out.width(), out.height()), expected, "{pairs:?}");
            assert_eq!(op.output_size((400, 200)), expected, "{pairs:?}");
        }
        assert!(DEFINITION.build(&[]).is_err());
    }

    #[test]
    fn contain_pads_with_transparency() {
        let Output::Image(out) = resize(&[("w", "100"), ("h", "100"), ("fit", "contain")])
            .apply(DynamicImage::new_rgb8(400, 200))
            .unwrap()
        else {
            panic!()
        };
        let rgba = out.to_rgba8();
        assert_eq!(rgba.get_pixel(50, 5).0[3], 0, "padding is transparent");
        assert_eq!(rgba.get_pixel(50, 50).0[3], 255, "the image is opaque");
    }
}
