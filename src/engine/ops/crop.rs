//! `crop`: a rectangle in source pixels (`x`, `y`, `w`, `h`, after EXIF orientation),
//! or the largest window of an `aspect` ratio, placed by `gravity`.

use image::DynamicImage;

use super::{canonical, Definition, Operation, Output, Produces};
use crate::engine::params::{Args, ParamKind, ParamSpec};
use crate::engine::resize::{Gravity, GRAVITIES};
use crate::error::{Error, Result};

const COORDINATE: ParamKind = ParamKind::Int { min: 0, max: 65535 };
const SIDE: ParamKind = ParamKind::Int { min: 1, max: 65535 };

pub static DEFINITION: Definition = Definition {
    name: "crop",
    summary: "Cuts out a rectangle (x, y, w, h) or the largest window of an aspect ratio.",
    params: &[
        ParamSpec {
            name: "x",
            kind: COORDINATE,
            default: None,
            doc: "Left edge of the rectangle (default 0).",
        },
        ParamSpec {
            name: "y",
            kind: COORDINATE,
            default: None,
            doc: "Top edge of the rectangle (default 0).",
        },
        ParamSpec {
            name: "w",
            kind: SIDE,
            default: None,
            doc: "Rectangle width.",
        },
        ParamSpec {
            name: "h",
            kind: SIDE,
            default: None,
            doc: "Rectangle height.",
        },
        ParamSpec {
            name: "aspect",
            kind: ParamKind::Ratio,
            default: None,
            doc: "Instead of a rectangle: the largest window of this ratio, e.g. 16:9.",
        },
        ParamSpec {
            name: "gravity",
            kind: ParamKind::Choice { values: GRAVITIES },
            default: None,
            doc: "Where the aspect window sits (default center).",
        },
    ],
    produces: Produces::Image,
    build: |args| Crop::from_args(args).map(|c| Box::new(c) as _),
};

#[derive(Debug, PartialEq)]
enum Crop {
    Rectangle {
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    },
    Aspect {
        ratio: (u32, u32),
        gravity: &'static str,
    },
}

impl Crop {
    fn from_args(args: &Args) -> Result<Self> {
        let rectangle = ["x", "y", "w", "h"].iter().any(|p| args.int(p).is_some());
        match (args.ratio("aspect"), rectangle) {
            (Some(ratio), false) => Ok(Crop::Aspect {
                ratio,
                gravity: args.choice("gravity").unwrap_or("center"),
            }),
            (None, true) if args.choice("gravity").is_none() => {
                match (args.pixels("w"), args.pixels("h")) {
                    (Some(width), Some(height)) => Ok(Crop::Rectangle {
                        x: args.pixels("x").unwrap_or(0),
                        y: args.pixels("y").unwrap_or(0),
                        width,
                        height,
                    }),
                    _ => Err(invalid("a rectangle needs both 'w' and 'h'")),
                }
            }
            _ => Err(invalid(
                "give either a rectangle (x, y, w, h) or 'aspect' with an optional 'gravity'",
            )),
        }
    }

    /// The rectangle to keep from an image of `size`, or why it cannot be kept.
    fn window(&self, size: (u32, u32)) -> Result<(u32, u32, u32, u32)> {
        match *self {
            Crop::Rectangle {
                x,
                y,
                width,
                height,
            } => {
                let fits = u64::from(x) + u64::from(width) <= u64::from(size.0)
                    && u64::from(y) + u64::from(height) <= u64::from(size.1);
                if fits {
                    Ok((x, y, width, height))
                } else {
                    Err(Error::bad_request(
                        "crop_outside_image",
                        format!(
                            "the crop {width}x{height} at {x},{y} does not fit in the {}x{} image",
                            size.0, size.1
                        ),
                    ))
                }
            }
            Crop::Aspect { ratio, .. } => {
                let (w, h) = (f64::from(size.0), f64::from(size.1));
                let target = f64::from(ratio.0) / f64::from(ratio.1);
                let (cw, ch) = if w / h > target {
                    (h * target, h)
                } else {
                    (w, w / target)
                };
                Ok((
                    0,
                    0,
                    (cw.round() as u32).clamp(1, size.0),
                    (ch.round() as u32).clamp(1, size.1),
                ))
            }
        }
    }
}

fn invalid(why: &str) -> Error {
    Error::bad_request("invalid_parameter", format!("transform 'crop': {why}"))
}

impl Operation for Crop {
    fn key(&self) -> String {
        match self {
            Crop::Rectangle {
                x,
                y,
                width,
                height,
            } => canonical(
                "crop",
                &[
                    ("x", x.to_string()),
                    ("y", y.to_string()),
                    ("w", width.to_string()),
                    ("h", height.to_string()),
                ],
            ),
            Crop::Aspect { ratio, gravity } => canonical(
                "crop",
                &[
                    ("aspect", format!("{}:{}", ratio.0, ratio.1)),
                    ("gravity", gravity.to_string()),
                ],
            ),
        }
    }

    fn apply(&self, image: DynamicImage) -> Result<Output> {
        let (mut x, mut y, w, h) = self.window((image.width(), image.height()))?;
        if let Crop::Aspect { gravity, .. } = self {
            (x, y) = Gravity::from_name(gravity).place(&image, (w, h));
        }
        Ok(Output::Image(image.crop_imm(x, y, w, h)))
    }

    fn output_size(&self, input: (u32, u32)) -> (u32, u32) {
        self.window(input).map_or(input, |(_, _, w, h)| (w, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crop(pairs: &[(&str, &str)]) -> Result<Box<dyn Operation>> {
        let raw = crate::engine::params::owned(pairs);
        DEFINITION.build(&raw)
    }

    #[test]
    fn rectangles_and_aspects() {
        let image = DynamicImage::new_rgb8(400, 300);
        let cases = [
            (
                &[("x", "10"), ("y", "20"), ("w", "100"), ("h", "50")][..],
                (100, 50),
            ),
            (&[("aspect", "1:1")], (300, 300)),
            (&[("aspect", "16:9"), ("gravity", "north")], (400, 225)),
        ];
        for (pairs, expected) in cases {
            let Output::Image(out) = crop(pairs).unwrap().apply(image.clone()).unwrap() else {
                panic!()
            };
            assert_eq!((out.width(), out.height()), expected, "{pairs:?}");
        }
    }

    #[test]
    fn bad_crops_are_client_errors() {
        assert!(crop(&[]).is_err());
        assert!(crop(&[("w", "10")]).is_err());
        assert!(crop(&[("aspect", "1:1"), ("w", "10"), ("h", "10")]).is_err());
        let outside = crop(&[("x", "390"), ("w", "20"), ("h", "20")]).unwrap();
        let err = outside.apply(DynamicImage::new_rgb8(400, 300)).unwrap_err();
        assert_eq!(err.code, "crop_outside_image");
    }
}
