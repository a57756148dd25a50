//! `ascii`: the image as ASCII art, for terminals and logs.
//!
//! One character per cell, `width` columns (default 100). A terminal cell is about
//! twice as tall as it is wide, so the row count is halved to keep the picture's
//! proportions: rows = round(height / width x columns x 0.5).
//!
//! The ramp runs from dark to light: `@%#*+=-:. ` (ten steps; `@` is the darkest
//! pixel, a space the lightest), which reads right as dark text on a light background.
//! `invert=true` reverses it for light text on a dark background.

use fast_image_resize::FilterType;
use image::DynamicImage;

use super::{canonical, Definition, Operation, Output, Produces};
use crate::engine::encode::flatten;
use crate::engine::params::{Args, ParamKind, ParamSpec};
use crate::engine::resize::resize;
use crate::error::Result;

/// Characters from the darkest pixel to the lightest.
pub const RAMP: &str = "@%#*+=-:. ";

/// How much taller a terminal cell is than it is wide.
const CELL_ASPECT: f64 = 2.0;

pub static DEFINITION: Definition = Definition {
    name: "ascii",
    summary:
        "Renders the image as text/plain ASCII art with the ramp '@%#*+=-:. ' (dark to light).",
    params: &[
        ParamSpec {
            name: "width",
            kind: ParamKind::Int { min: 1, max: 1000 },
            default: Some("100"),
            doc: "Columns of characters.",
        },
        ParamSpec {
            name: "invert",
            kind: ParamKind::Bool,
            default: Some("false"),
            doc: "Reverse the ramp, for light text on a dark background.",
        },
    ],
    produces: Produces::Text,
    build: |args| Ok(Box::new(Ascii::from_args(args))),
};

#[derive(Debug)]
struct Ascii {
    columns: u32,
    invert: bool,
}

impl Ascii {
    fn from_args(args: &Args) -> Self {
        Self {
            columns: args.int("width").map_or(100, |v| v as u32),
            invert: args.bool("invert").unwrap_or(false),
        }
    }

    fn rows_for(&self, width: u32, height: u32) -> u32 {
        let rows = f64::from(height) / f64::from(width) * f64::from(self.columns) / CELL_ASPECT;
        (rows.round() as u32).max(1)
    }
}

impl Operation for Ascii {
    fn key(&self) -> String {
        canonical(
            "ascii",
            &[
                ("width", self.columns.to_string()),
                ("invert", self.invert.to_string()),
            ],
        )
    }

    fn apply(&self, image: DynamicImage) -> Result<Output> {
        let rows = self.rows_for(image.width(), image.height());
        // Transparent areas read as the background: composite onto white first.
        let gray = DynamicImage::ImageLuma8(flatten(&image, [255, 255, 255]).into_luma8());
        let cells = resize(&gray, self.columns, rows, FilterType::Box)?.into_luma8();
        let mut ramp: Vec<char> = RAMP.chars().collect();
        if self.invert {
            ramp.reverse();
        }
        let steps = ramp.len() - 1;
        let mut text = String::with_capacity(((self.columns + 1) * rows) as usize);
        for row in cells.rows() {
            for pixel in row {
                text.push(ramp[usize::from(pixel.0[0]) * steps / 255]);
            }
            text.push('\n');
        }
        Ok(Output::Text(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn black_and_white_map_to_the_ends_of_the_ramp() {
        let mut img = image::GrayImage::new(4, 8);
        for (x, _, p) in img.enumerate_pixels_mut() {
            p.0[0] = if x < 2 { 0 } else { 255 };
        }
        let op = Ascii {
            columns: 4,
            invert: false,
        };
        let Output::Text(text) = op.apply(DynamicImage::ImageLuma8(img)).unwrap() else {
            panic!()
        };
        assert_eq!(text, "@@  \n@@  \n@@  \n@@  \n");
    }
}
